//! The operator's calls on a running node (`admin --server`): the node hands
//! out the capability for its operator token only.

use quicnprotochat_wire::IdentityKey;
use quicnprotochat_wire::node_capnp::operator;

use super::{ClientError, NodeConnection, protocol};

/// The operator's capability on one node.
pub struct OperatorHandle {
    operator: operator::Client,
}

/// One account, as the node lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountEntry {
    /// Its name.
    pub username: String,
    /// Its devices.
    pub devices: Vec<IdentityKey>,
}

impl NodeConnection {
    /// The operator's capability, for the node's operator token (refused
    /// `UNAUTHORIZED` otherwise).
    pub async fn operator(&self, token: &str) -> Result<OperatorHandle, ClientError> {
        let mut req = self.node.operator_request();
        req.get().set_operator_token(token.as_bytes());
        let reply = req.send().promise.await?;
        Ok(OperatorHandle {
            operator: reply.get()?.get_operator()?,
        })
    }
}

fn devices(list: capnp::data_list::Reader<'_>) -> Result<Vec<IdentityKey>, ClientError> {
    list.iter()
        .map(|d| IdentityKey::from_wire(d?, "device").map_err(protocol))
        .collect()
}

impl OperatorHandle {
    /// Every account with its devices, by name.
    pub async fn accounts(&self) -> Result<Vec<AccountEntry>, ClientError> {
        let reply = self.operator.accounts_request().send().promise.await?;
        reply
            .get()?
            .get_accounts()?
            .iter()
            .map(|a| {
                Ok(AccountEntry {
                    username: a.get_username()?.to_string().map_err(protocol)?,
                    devices: devices(a.get_devices()?)?,
                })
            })
            .collect()
    }

    /// Deletes the account `username` and everything of its devices; returns
    /// the devices deleted.
    pub async fn delete_account(&self, username: &str) -> Result<Vec<IdentityKey>, ClientError> {
        let mut req = self.operator.delete_account_request();
        req.get().set_username(username);
        let reply = req.send().promise.await?;
        devices(reply.get()?.get_devices()?)
    }
}
