//! The operator's capability: the accounts of a running node, listed and
//! deleted. Handed out by `Node.operator` for the node's operator token only.

use super::*;
use quicnprotochat_wire::node_capnp::operator;

pub(super) struct OperatorService {
    ctx: Arc<NodeContext>,
    budget: ConnectionBudget,
}

impl OperatorService {
    pub(super) fn new(ctx: Arc<NodeContext>, budget: ConnectionBudget) -> OperatorService {
        OperatorService { ctx, budget }
    }
}

impl operator::Server for OperatorService {
    async fn accounts(
        self: Rc<Self>,
        _: operator::AccountsParams,
        mut results: operator::AccountsResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        let auth = self.ctx.auth.clone();
        let accounts = spawned(async move { auth.accounts().await })
            .await?
            .map_err(auth_refusal)?;
        let mut list = results.get().init_accounts(accounts.len() as u32);
        for (i, a) in accounts.iter().enumerate() {
            let mut entry = list.reborrow().get(i as u32);
            entry.set_username(a.username.as_str());
            let mut devices = entry.init_devices(a.devices.len() as u32);
            for (j, d) in a.devices.iter().enumerate() {
                devices.set(j as u32, &d.0);
            }
        }
        Ok(())
    }

    async fn delete_account(
        self: Rc<Self>,
        params: operator::DeleteAccountParams,
        mut results: operator::DeleteAccountResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let username = text(p.get_username())?;
        let devices = self
            .ctx
            .auth
            .delete_account(&username)
            .await
            .map_err(auth_refusal)?;
        // The devices are gone from the directory: nothing new reaches their
        // inboxes; delete what was queued.
        for d in &devices {
            self.ctx.registry.purge(*d).await.map_err(WireError::from)?;
        }
        tracing::info!(devices = devices.len(), "an operator deleted an account");
        let mut list = results.get().init_devices(devices.len() as u32);
        for (i, d) in devices.iter().enumerate() {
            list.set(i as u32, &d.0);
        }
        Ok(())
    }
}
