//! An authenticated session: calls on behalf of one identity.

use super::*;

/// An authenticated session: calls on behalf of one identity.
#[derive(Clone)]
pub struct SessionHandle {
    pub(super) session: session::Client,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionHandle")
    }
}

/// What `whoami` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhoAmI {
    /// The session's device.
    pub identity_key: IdentityKey,
    /// Its account, empty when none.
    pub username: String,
    /// Devices in the account.
    pub device_count: u32,
    /// 0 when the session did not come from a login.
    pub expires_at_ms: u64,
}

/// What became of one recipient of a group send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    /// The recipient device.
    pub recipient: IdentityKey,
    /// Its seq, or why its inbox did not take the message.
    pub outcome: Result<u64, WireError>,
}

/// The bodies of one commit (see [`SessionHandle::commit_group`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitBodies {
    /// For every member before the commit but this device.
    pub commit: Vec<u8>,
    /// For every member the commit adds (empty when none).
    pub welcome: Vec<u8>,
    /// For this device.
    pub receipt: Vec<u8>,
    /// Per-recipient parts, where the bodies need them.
    pub parts: Vec<(IdentityKey, Vec<u8>)>,
    /// The group's GroupInfo once the commit applies, for the node to keep (not a
    /// body: nobody gets it delivered; empty: none).
    pub group_info: Vec<u8>,
}

/// A group member as the node's directory knows it (see
/// [`SessionHandle::group_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    /// The device.
    pub identity_key: IdentityKey,
    /// Its account's name (empty: no account).
    pub username: String,
    /// Its signed hybrid public key (empty: none published).
    pub hybrid_public_key: Vec<u8>,
}

fn read_directory(
    list: capnp::struct_list::Reader<'_, quicnprotochat_wire::node_capnp::member_entry::Owned>,
) -> Result<Vec<DirectoryEntry>, ClientError> {
    let mut members = Vec::with_capacity(list.len() as usize);
    for m in list {
        members.push(DirectoryEntry {
            identity_key: IdentityKey::from_wire(m.get_identity_key()?, "identityKey")
                .map_err(ClientError::Refused)?,
            username: m
                .get_username()?
                .to_string()
                .map_err(|e| ClientError::Protocol(format!("username: {e}")))?,
            hybrid_public_key: m.get_hybrid_public_key()?.to_vec(),
        });
    }
    Ok(members)
}

fn write_members(mut list: capnp::data_list::Builder<'_>, members: &[Vec<u8>]) {
    for (i, m) in members.iter().enumerate() {
        list.set(i as u32, m);
    }
}

fn write_recipients(
    mut list: capnp::struct_list::Builder<'_, quicnprotochat_wire::node_capnp::recipient::Owned>,
    recipients: &[(IdentityKey, Vec<u8>)],
) {
    for (i, (who, part)) in recipients.iter().enumerate() {
        let mut r = list.reborrow().get(i as u32);
        r.set_identity_key(&who.0);
        r.set_part(part);
    }
}

impl SessionHandle {
    /// The session capability as generated code sees it (fuzzing).
    #[doc(hidden)]
    pub fn raw_session(&self) -> session::Client {
        self.session.clone()
    }

    /// Who this session is.
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        let reply = self.session.whoami_request().send().promise.await?;
        let r = reply.get()?;
        Ok(WhoAmI {
            identity_key: IdentityKey::from_wire(r.get_identity_key()?, "identityKey")
                .map_err(ClientError::Refused)?,
            username: r.get_username()?.to_string().map_err(protocol)?,
            device_count: r.get_device_count(),
            expires_at_ms: r.get_expires_at_ms(),
        })
    }

    /// Every device of this session's account (this one among them), sorted.
    pub async fn devices(&self) -> Result<Vec<IdentityKey>, ClientError> {
        let reply = self.session.devices_request().send().promise.await?;
        reply
            .get()?
            .get_identity_keys()?
            .iter()
            .map(|k| IdentityKey::from_wire(k?, "identityKey").map_err(ClientError::Refused))
            .collect()
    }

    /// A group's latest GroupInfo as its last committer published it, with its
    /// members' directory entries; for a device whose account is in the group.
    pub async fn group_info(
        &self,
        group_id: &[u8],
    ) -> Result<(Vec<u8>, Vec<DirectoryEntry>), ClientError> {
        let mut req = self.session.group_info_request();
        req.get().set_group_id(group_id);
        let reply = req.send().promise.await?;
        let r = reply.get()?;
        let members = read_directory(r.get_members()?)?;
        Ok((r.get_group_info()?.to_vec(), members))
    }

    /// The node's directory entries of those of `keys` that are members of the
    /// group now (the others are left out); for a device whose account is in
    /// the group. What names claimed by other members are checked against.
    pub async fn group_members(
        &self,
        group_id: &[u8],
        keys: &[[u8; 32]],
    ) -> Result<Vec<DirectoryEntry>, ClientError> {
        let mut req = self.session.group_members_request();
        req.get().set_group_id(group_id);
        let mut list = req.get().init_identity_keys(keys.len() as u32);
        for (i, k) in keys.iter().enumerate() {
            list.set(i as u32, k);
        }
        let reply = req.send().promise.await?;
        read_directory(reply.get()?.get_members()?)
    }

    /// The groups any device of this session's account is a member of.
    pub async fn account_groups(&self) -> Result<Vec<Vec<u8>>, ClientError> {
        let reply = self.session.account_groups_request().send().promise.await?;
        Ok(reply
            .get()?
            .get_group_ids()?
            .iter()
            .map(|g| g.map(|g| g.to_vec()))
            .collect::<Result<_, _>>()?)
    }

    /// Publishes one-time KeyPackages, optionally a new last-resort package and
    /// the signed hybrid key (empty = keep what the node has).
    pub async fn upload_key_packages(
        &self,
        one_time: &[Vec<u8>],
        last_resort: &[u8],
        hybrid_public_key: &[u8],
    ) -> Result<(), ClientError> {
        let mut req = self.session.upload_key_packages_request();
        {
            let mut p = req.get();
            let mut list = p.reborrow().init_one_time(one_time.len() as u32);
            for (i, kp) in one_time.iter().enumerate() {
                list.set(i as u32, kp);
            }
            p.set_last_resort(last_resort);
            p.set_hybrid_public_key(hybrid_public_key);
        }
        req.send().promise.await?;
        Ok(())
    }

    /// How many one-time KeyPackages are left, and how often the last-resort one
    /// was served.
    pub async fn key_package_status(&self) -> Result<(u64, u64), ClientError> {
        let reply = self
            .session
            .key_package_status_request()
            .send()
            .promise
            .await?;
        let r = reply.get()?;
        Ok((r.get_one_time_remaining(), r.get_last_resort_served()))
    }

    /// Revokes this session's token.
    pub async fn logout(&self) -> Result<(), ClientError> {
        self.session.logout_request().send().promise.await?;
        Ok(())
    }

    /// Sets the hash of the access key sealed senders must present.
    pub async fn set_access_key(&self, access_key_hash: &[u8]) -> Result<(), ClientError> {
        let mut req = self.session.set_access_key_request();
        req.get().set_access_key_hash(access_key_hash);
        req.send().promise.await?;
        Ok(())
    }

    /// Ends every session of every device of this account (this one too);
    /// returns how many ended. Needs a fresh password login.
    pub async fn logout_everywhere(&self) -> Result<u32, ClientError> {
        let reply = self
            .session
            .logout_everywhere_request()
            .send()
            .promise
            .await?;
        Ok(reply.get()?.get_sessions_ended())
    }

    /// A new password for this account (an OPAQUE registration under its
    /// `username`); ends every other session of the account and returns how
    /// many. Needs a fresh password login.
    pub async fn change_password(
        &self,
        username: &str,
        new_password: &[u8],
    ) -> Result<u32, ClientError> {
        let (state, request) = opaque::client_register_start(new_password).map_err(opaque_err)?;
        let mut req = self.session.change_password_start_request();
        req.get().set_request(&request);
        let reply = req.send().promise.await?;
        let response = reply.get()?.get_response()?.to_vec();
        let upload = opaque::client_register_finish(state, new_password, &response, username)
            .map_err(opaque_err)?;
        let mut req = self.session.change_password_finish_request();
        req.get().set_upload(&upload);
        let reply = req.send().promise.await?;
        Ok(reply.get()?.get_sessions_ended())
    }

    /// Removes another device from this account.
    pub async fn remove_device(&self, device: &IdentityKey) -> Result<(), ClientError> {
        let mut req = self.session.remove_device_request();
        req.get().set_identity_key(&device.0);
        req.send().promise.await?;
        Ok(())
    }

    /// Stores `payload` in `recipient`'s inbox; returns its seq (durable).
    pub async fn enqueue(
        &self,
        recipient: &IdentityKey,
        payload: &[u8],
    ) -> Result<u64, ClientError> {
        self.enqueue_raw(&recipient.0, payload).await
    }

    /// `enqueue` with the recipient as raw bytes, unchecked: for callers (and
    /// tests) that must be able to send what the node has to refuse.
    pub async fn enqueue_raw(&self, recipient: &[u8], payload: &[u8]) -> Result<u64, ClientError> {
        let mut req = self.session.enqueue_request();
        {
            let mut p = req.get();
            p.set_recipient(recipient);
            p.set_payload(payload);
        }
        let reply = req.send().promise.await?;
        Ok(reply.get()?.get_seq())
    }

    /// Stores every `(recipient, payload)` in one durable transaction, all or
    /// none; returns the seqs in the same order.
    pub async fn enqueue_batch(
        &self,
        deliveries: &[(IdentityKey, Vec<u8>)],
    ) -> Result<Vec<u64>, ClientError> {
        let mut req = self.session.enqueue_batch_request();
        write_deliveries(
            req.get().init_deliveries(deliveries.len() as u32),
            deliveries,
        );
        let reply = req.send().promise.await?;
        Ok(reply.get()?.get_seqs()?.iter().collect())
    }

    /// Offers a commit made at `epoch` of `group_id`; its deliveries are stored
    /// (one transaction) only if it is the first commit at that epoch, otherwise
    /// the node answers `STALE_EPOCH`.
    /// `members`: the group's members once the commit applies (this device among
    /// them); the node lets only them commit next. `mls_commit`: the commit
    /// itself, whose clear header the node checks against `group_id` and `epoch`.
    pub async fn commit(
        &self,
        group_id: &[u8],
        epoch: u64,
        members: &[Vec<u8>],
        deliveries: &[(IdentityKey, Vec<u8>)],
        mls_commit: &[u8],
    ) -> Result<Vec<u64>, ClientError> {
        let mut req = self.session.commit_request();
        req.get().set_group_id(group_id);
        req.get().set_epoch(epoch);
        req.get().set_mls_commit(mls_commit);
        write_members(req.get().init_members(members.len() as u32), members);
        write_deliveries(
            req.get().init_deliveries(deliveries.len() as u32),
            deliveries,
        );
        let reply = req.send().promise.await?;
        Ok(reply.get()?.get_seqs()?.iter().collect())
    }

    /// Sends one body to the group's members (`recipients` empty: every member
    /// but this device; otherwise exactly these, each with its part). The node
    /// stores it once; each recipient's inbox takes or drops its copy on its own.
    pub async fn send_group(
        &self,
        group_id: &[u8],
        body: &[u8],
        recipients: &[(IdentityKey, Vec<u8>)],
    ) -> Result<Vec<SendOutcome>, ClientError> {
        let mut req = self.session.send_group_request();
        req.get().set_group_id(group_id);
        req.get().set_body(body);
        write_recipients(
            req.get().init_recipients(recipients.len() as u32),
            recipients,
        );
        let reply = req.send().promise.await?;
        let mut out = Vec::new();
        for o in reply.get()?.get_outcomes()? {
            let recipient = IdentityKey::from_wire(o.get_recipient()?, "recipient")
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let outcome = match o
                .which()
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                quicnprotochat_wire::node_capnp::send_outcome::Seq(seq) => Ok(seq),
                quicnprotochat_wire::node_capnp::send_outcome::Refused(text) => {
                    let text = text?
                        .to_string()
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    Err(WireError::parse(&text).unwrap_or_else(|| {
                        WireError::new(quicnprotochat_wire::ErrorCode::Unavailable, text)
                    }))
                }
            };
            out.push(SendOutcome { recipient, outcome });
        }
        Ok(out)
    }

    /// Offers a commit whose bodies are uploaded once: the node stores
    /// `commit_body` for every member before it, `welcome_body` for every member
    /// it adds and `receipt_body` for this device, in one transaction, only if it
    /// is the first commit at `epoch` (`STALE_EPOCH` otherwise). `parts`: each
    /// recipient's part where the bodies need one. Returns how many inboxes got
    /// a copy.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit_group(
        &self,
        group_id: &[u8],
        epoch: u64,
        members: &[Vec<u8>],
        mls_commit: &[u8],
        bodies: &CommitBodies,
    ) -> Result<u32, ClientError> {
        let mut req = self.session.commit_group_request();
        req.get().set_group_id(group_id);
        req.get().set_epoch(epoch);
        req.get().set_mls_commit(mls_commit);
        write_members(req.get().init_members(members.len() as u32), members);
        req.get().set_commit_body(&bodies.commit);
        req.get().set_welcome_body(&bodies.welcome);
        req.get().set_receipt_body(&bodies.receipt);
        write_recipients(
            req.get().init_parts(bodies.parts.len() as u32),
            &bodies.parts,
        );
        req.get().set_group_info(&bodies.group_info);
        let reply = req.send().promise.await?;
        Ok(reply.get()?.get_delivered())
    }

    /// Envelopes of the own inbox with seq > `after` (0 = as many as allowed).
    pub async fn fetch(&self, after: u64, limit: u32) -> Result<Vec<Envelope>, ClientError> {
        let mut req = self.session.fetch_request();
        req.get().set_after(after);
        req.get().set_limit(limit);
        let reply = req.send().promise.await?;
        read_envelopes(reply.get()?.get_envelopes()?)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Like `fetch`, but waits up to `timeout` for something to arrive.
    pub async fn fetch_wait(
        &self,
        after: u64,
        limit: u32,
        timeout: Duration,
    ) -> Result<Vec<Envelope>, ClientError> {
        let mut req = self.session.fetch_wait_request();
        req.get().set_after(after);
        req.get().set_limit(limit);
        req.get()
            .set_timeout_ms(timeout.as_millis().min(u32::MAX as u128) as u32);
        let reply = req.send().promise.await?;
        read_envelopes(reply.get()?.get_envelopes()?)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Asks the node to push the own inbox's envelopes after `after` to `to`
    /// as they arrive, instead of long-polling (see [`Pushed`]); replaces this
    /// session's last subscription. Needs a node that serves it
    /// (`UNIMPLEMENTED` from an older one). The subscription also ends when
    /// the connection does: `to`'s receiver then sees its senders gone.
    pub async fn subscribe(
        &self,
        after: u64,
        to: tokio::sync::mpsc::Sender<super::Pushed>,
    ) -> Result<(), ClientError> {
        let mut req = self.session.subscribe_request();
        req.get()
            .set_receiver(capnp_rpc::new_client(super::push::InboxReceiver { to }));
        req.get().set_after(after);
        req.send().promise.await?;
        Ok(())
    }

    /// Deletes the own inbox's envelopes up to `up_to` (durable on return).
    pub async fn ack(&self, up_to: u64) -> Result<(), ClientError> {
        let mut req = self.session.ack_request();
        req.get().set_up_to(up_to);
        req.send().promise.await?;
        Ok(())
    }
}

fn write_deliveries(
    mut list: capnp::struct_list::Builder<'_, quicnprotochat_wire::node_capnp::delivery::Owned>,
    deliveries: &[(IdentityKey, Vec<u8>)],
) {
    for (i, (recipient, payload)) in deliveries.iter().enumerate() {
        let mut d = list.reborrow().get(i as u32);
        d.set_recipient(&recipient.0);
        d.set_payload(payload);
    }
}
