//! The capability of one authenticated device: its own inbox (fetch, long-poll,
//! ack), delivery to others (enqueue, batches, group commits), its keys and
//! account.

use super::*;
use crate::auth::SessionProof;
use crate::core::commit::{
    CommitCallRefusal, check_commit_header, check_group_id, check_group_info,
    check_group_info_quota, check_members,
};
use crate::group::SharedCommit;
use quicnprotochat_crypto::mls::CommitHeader;
use quicnprotochat_wire::fanout::MAX_PART;

/// Calls on behalf of one authenticated identity. It has no way to name another
/// inbox for fetch or ack: its own is fixed at construction.
pub(super) struct SessionService {
    ctx: Arc<NodeContext>,
    budget: ConnectionBudget,
    /// Whose session it is, and what keeps it standing.
    terms: SessionTerms,
    remote: std::net::SocketAddr,
    /// The inbox push this session subscribed (it stops when replaced or
    /// when the session is dropped with its connection).
    push: std::cell::RefCell<Option<push::Subscription>>,
    /// When the last subscription started (see [`SUBSCRIBE_INTERVAL`]).
    subscribed_at: std::cell::Cell<Option<std::time::Instant>>,
}

/// The least time between two subscriptions of one session: each starts with
/// a read of up to a fetch's bytes, which a replaced one does not take back.
const SUBSCRIBE_INTERVAL: Duration = Duration::from_secs(1);

/// What decides whether a session still stands.
#[derive(Debug, Clone, Copy)]
pub(super) struct SessionTerms {
    pub(super) identity: IdentityKey,
    /// Set when the session came from a login or resume: it ends with the token.
    token_hash: Option<[u8; 32]>,
    proof: SessionProof,
}

impl SessionTerms {
    /// Whether the session's token is revoked or expired, or its device is no
    /// longer registered (removed from its account).
    pub(super) fn ended(&self, ctx: &NodeContext) -> bool {
        match &self.token_hash {
            Some(h) => !ctx.auth.session_alive(h),
            None => {
                !ctx.auth.accepts_inbox(&self.identity)
                    || self.proof.expired(std::time::Instant::now())
            }
        }
    }
}

/// The refusal of every call of a session that no longer stands.
pub(super) fn session_ended() -> WireError {
    WireError::new(ErrorCode::Unauthorized, "session ended; log in again")
}

impl SessionService {
    pub(super) fn new(
        ctx: Arc<NodeContext>,
        budget: ConnectionBudget,
        identity: IdentityKey,
        token_hash: Option<[u8; 32]>,
        proof: SessionProof,
        remote: std::net::SocketAddr,
    ) -> SessionService {
        SessionService {
            ctx,
            budget,
            terms: SessionTerms {
                identity,
                token_hash,
                proof,
            },
            remote,
            push: std::cell::RefCell::new(None),
            subscribed_at: std::cell::Cell::new(None),
        }
    }

    /// Refuses every call once the session no longer stands.
    fn check_alive(&self) -> Result<(), capnp::Error> {
        if self.terms.ended(&self.ctx) {
            return Err(session_ended().into());
        }
        Ok(())
    }

    /// Refuses what acts for the whole account (removing a device, logging out
    /// everywhere, a new password) unless this session is a password login of
    /// the last few minutes: a stolen token or device key alone cannot.
    fn check_password_fresh(&self, what: &str) -> Result<(), capnp::Error> {
        if !self
            .terms
            .proof
            .may_act_for_the_account(std::time::Instant::now())
        {
            return Err(refuse(
                ErrorCode::Unauthorized,
                format!("{what} needs the account password: log in again first"),
            ));
        }
        Ok(())
    }

    /// Reads the own inbox off the store.
    async fn read_inbox(&self, after: u64, limit: u32) -> Result<Vec<Envelope>, capnp::Error> {
        read_inbox(&self.ctx, self.terms.identity, after, limit)
            .await
            .map_err(capnp::Error::from)
    }
}

/// Reads `inbox` off the store (as a task of the node's runtime: it may touch
/// disk): envelopes after `after`, at most `limit` (0: the most a fetch may
/// return) and the byte cap of a fetch.
pub(super) async fn read_inbox(
    ctx: &NodeContext,
    inbox: IdentityKey,
    after: u64,
    limit: u32,
) -> Result<Vec<Envelope>, WireError> {
    let limit = match limit {
        0 => MAX_FETCH_LIMIT,
        n => n.min(MAX_FETCH_LIMIT),
    } as usize;
    let store = ctx.store.clone();
    tokio::spawn(async move { store.fetch(inbox, after, limit, MAX_FETCH_BYTES).await })
        .await
        .map_err(|_| WireError::new(ErrorCode::Unavailable, "a node task failed"))?
        .map_err(|e| {
            tracing::error!(error = %e, "fetch failed");
            WireError::new(ErrorCode::Unavailable, "storage unavailable")
        })
}

fn write_seqs(seqs: &[u64], mut out: capnp::primitive_list::Builder<'_, u64>) {
    for (i, seq) in seqs.iter().enumerate() {
        out.set(i as u32, *seq);
    }
}

/// What a reply carrying `list` holds: its payloads and a word-aligned
/// envelope around each.
pub(super) fn reply_bytes(list: &[Envelope]) -> u64 {
    list.iter()
        .map(|e| (e.data.len() + e.part.len()) as u64 + 32)
        .sum()
}

pub(super) fn write_envelopes(
    list: &[Envelope],
    mut out: capnp::struct_list::Builder<'_, quicnprotochat_wire::node_capnp::envelope::Owned>,
) {
    for (i, env) in list.iter().enumerate() {
        env.write(out.reborrow().get(i as u32));
    }
}

impl SessionService {
    /// Reads a commit's member list: identity keys, the caller among them.
    fn members(
        &self,
        list: capnp::data_list::Reader<'_>,
    ) -> Result<std::collections::BTreeSet<[u8; 32]>, capnp::Error> {
        let members = identity_keys(list, "member")?;
        check_members(&members, &self.terms.identity.0).map_err(commit_refusal)?;
        Ok(members)
    }

    /// Reads and checks a list of deliveries: every recipient a valid, existing
    /// inbox, every payload within the limit, and not too many of them.
    fn deliveries(
        &self,
        list: capnp::struct_list::Reader<'_, quicnprotochat_wire::node_capnp::delivery::Owned>,
    ) -> Result<Vec<Delivery>, capnp::Error> {
        check_list_len(list.len(), "deliveries")?;
        list.iter()
            .map(|d| {
                let recipient =
                    IdentityKey::from_wire(d.get_recipient().map_err(bad_params)?, "recipient")?;
                check_recipient(&self.ctx, &recipient)?;
                let payload = d.get_payload().map_err(bad_params)?;
                check_payload(&self.ctx, payload)?;
                Ok(Delivery {
                    recipient,
                    payload: payload.to_vec(),
                })
            })
            .collect()
    }
}

/// Refuses a list of deliveries or recipients longer than one call may carry.
fn check_list_len(len: u32, what: &str) -> Result<(), capnp::Error> {
    if len as usize > MAX_DELIVERIES {
        return Err(refuse(
            ErrorCode::TooLarge,
            format!("at most {MAX_DELIVERIES} {what} per call"),
        ));
    }
    Ok(())
}

/// A recipient's identity key and its part of a shared envelope.
type NamedPart = ([u8; 32], Vec<u8>);

impl SessionService {
    /// Reads a list of recipients with their parts: valid keys, parts within
    /// [`MAX_PART`], not too many.
    fn recipients(
        &self,
        list: capnp::struct_list::Reader<'_, quicnprotochat_wire::node_capnp::recipient::Owned>,
    ) -> Result<Vec<NamedPart>, capnp::Error> {
        check_list_len(list.len(), "recipients")?;
        list.iter()
            .map(|r| {
                let key =
                    IdentityKey::from_wire(r.get_identity_key().map_err(bad_params)?, "recipient")?;
                let part = r.get_part().map_err(bad_params)?;
                if part.len() > MAX_PART {
                    return Err(refuse(
                        ErrorCode::TooLarge,
                        format!("a recipient's part may hold at most {MAX_PART} bytes"),
                    ));
                }
                Ok((key.0, part.to_vec()))
            })
            .collect()
    }

    /// Charges a group send or commit to the caller's enqueue rate: one for the
    /// body, and one per 16 recipients (a reference costs a small index entry,
    /// not a stored payload).
    fn charge_fanout(&self, recipients: usize) -> Result<(), capnp::Error> {
        self.ctx
            .rates
            .enqueue_many(
                &self.terms.identity.0,
                self.remote.ip(),
                1 + recipients / 16,
            )
            .map_err(rate_limited)
    }
}

impl session::Server for SessionService {
    async fn whoami(
        self: Rc<Self>,
        _: session::WhoamiParams,
        mut results: session::WhoamiResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        let account = self.ctx.auth.account_of(&self.terms.identity);
        let expires = self
            .terms
            .token_hash
            .and_then(|h| self.ctx.auth.session_expiry(&h))
            .unwrap_or(0);
        let mut r = results.get();
        r.set_identity_key(&self.terms.identity.0);
        r.set_username(account.as_ref().map_or("", |a| a.username.as_str()));
        r.set_device_count(account.as_ref().map_or(1, |a| a.device_count));
        r.set_expires_at_ms(expires);
        Ok(())
    }

    async fn devices(
        self: Rc<Self>,
        _: session::DevicesParams,
        mut results: session::DevicesResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        let devices = self.ctx.auth.devices_of_account(&self.terms.identity);
        let mut list = results.get().init_identity_keys(devices.len() as u32);
        for (i, d) in devices.iter().enumerate() {
            list.set(i as u32, &d.0);
        }
        Ok(())
    }

    async fn group_info(
        self: Rc<Self>,
        params: session::GroupInfoParams,
        mut results: session::GroupInfoResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        let group_id = params
            .get()
            .map_err(bad_params)?
            .get_group_id()
            .map_err(bad_params)?;
        check_group_id(group_id).map_err(commit_refusal)?;
        let found = super::rejoin::group_info(&self.ctx, &self.terms.identity, group_id).await?;
        // Up to a MiB of GroupInfo, and the members: one reservation, so that
        // one reply alone always fits.
        let bytes = found.group_info.len() as u64 + member_entry_bytes(&found.members);
        reserve_reply(&self.budget, bytes)?;
        let mut r = results.get();
        r.set_group_info(&found.group_info);
        write_member_entries(&found.members, r.init_members(found.members.len() as u32));
        Ok(())
    }

    async fn group_members(
        self: Rc<Self>,
        params: session::GroupMembersParams,
        mut results: session::GroupMembersResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        let p = params.get().map_err(bad_params)?;
        let group_id = p.get_group_id().map_err(bad_params)?;
        check_group_id(group_id).map_err(commit_refusal)?;
        let asked = identity_keys(p.get_identity_keys().map_err(bad_params)?, "identity key")?;
        let found =
            super::rejoin::group_members(&self.ctx, &self.terms.identity, group_id, &asked).await?;
        reserve_reply(&self.budget, member_entry_bytes(&found))?;
        write_member_entries(&found, results.get().init_members(found.len() as u32));
        Ok(())
    }

    async fn account_groups(
        self: Rc<Self>,
        _: session::AccountGroupsParams,
        mut results: session::AccountGroupsResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        let groups = super::rejoin::account_groups(&self.ctx, &self.terms.identity).await?;
        let mut list = results.get().init_group_ids(groups.len() as u32);
        for (i, g) in groups.iter().enumerate() {
            list.set(i as u32, g);
        }
        Ok(())
    }

    async fn enqueue(
        self: Rc<Self>,
        params: session::EnqueueParams,
        mut results: session::EnqueueResults,
    ) -> Result<(), capnp::Error> {
        self.check_alive()?;
        self.ctx
            .rates
            .enqueue(&self.terms.identity.0, self.remote.ip())
            .map_err(rate_limited)?;
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let recipient =
            IdentityKey::from_wire(p.get_recipient().map_err(bad_params)?, "recipient")?;
        check_recipient(&self.ctx, &recipient)?;
        let payload = p.get_payload().map_err(bad_params)?;
        // Refuse before copying a payload that cannot be stored anyway.
        check_payload(&self.ctx, payload)?;
        let payload = payload.to_vec();
        let seq = self
            .ctx
            .registry
            .enqueue(recipient, payload)
            .await
            .map_err(WireError::from)?;
        metrics::counter!(crate::telemetry::ENQUEUES_TOTAL).increment(1);
        results.get().set_seq(seq);
        Ok(())
    }

    async fn enqueue_batch(
        self: Rc<Self>,
        params: session::EnqueueBatchParams,
        mut results: session::EnqueueBatchResults,
    ) -> Result<(), capnp::Error> {
        self.check_alive()?;
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let deliveries = self.deliveries(p.get_deliveries().map_err(bad_params)?)?;
        if deliveries.is_empty() {
            return Err(refuse(ErrorCode::BadRequest, "no deliveries"));
        }
        self.ctx
            .rates
            .enqueue_many(&self.terms.identity.0, self.remote.ip(), deliveries.len())
            .map_err(rate_limited)?;
        let count = deliveries.len() as u64;
        let seqs = self
            .ctx
            .registry
            .enqueue_many(deliveries, None)
            .await
            .map_err(WireError::from)?;
        metrics::counter!(crate::telemetry::ENQUEUES_TOTAL).increment(count);
        write_seqs(&seqs, results.get().init_seqs(seqs.len() as u32));
        Ok(())
    }

    async fn fetch(
        self: Rc<Self>,
        params: session::FetchParams,
        mut results: session::FetchResults,
    ) -> Result<(), capnp::Error> {
        self.check_alive()?;
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let list = self.read_inbox(p.get_after(), p.get_limit()).await?;
        reserve_reply(&self.budget, reply_bytes(&list))?;
        metrics::counter!(crate::telemetry::FETCHES_TOTAL).increment(1);
        write_envelopes(&list, results.get().init_envelopes(list.len() as u32));
        Ok(())
    }

    async fn fetch_wait(
        self: Rc<Self>,
        params: session::FetchWaitParams,
        mut results: session::FetchWaitResults,
    ) -> Result<(), capnp::Error> {
        self.check_alive()?;
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let (after, limit) = (p.get_after(), p.get_limit());
        let timeout = Duration::from_millis(p.get_timeout_ms().min(MAX_FETCH_WAIT_MS).into());
        let mut list = self.read_inbox(after, limit).await?;
        if list.is_empty() && !timeout.is_zero() {
            let arrived = self
                .ctx
                .registry
                .wait(self.terms.identity, after, timeout)
                .await
                .map_err(WireError::from)?;
            if arrived {
                // Not read at all when no reply could be sent now.
                self.budget.check_reply_room().map_err(over_budget)?;
                list = self.read_inbox(after, limit).await?;
            }
        }
        // A woken long-poll's reply waits for the peer to read it: counted
        // until written, refused past the budget (the messages stay stored).
        reserve_reply(&self.budget, reply_bytes(&list))?;
        metrics::counter!(crate::telemetry::FETCHES_TOTAL).increment(1);
        write_envelopes(&list, results.get().init_envelopes(list.len() as u32));
        Ok(())
    }

    async fn ack(
        self: Rc<Self>,
        params: session::AckParams,
        _: session::AckResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        let up_to = params.get().map_err(bad_params)?.get_up_to();
        self.ctx
            .registry
            .ack(self.terms.identity, up_to)
            .await
            .map_err(WireError::from)?;
        metrics::counter!(crate::telemetry::ACKS_TOTAL).increment(1);
        Ok(())
    }

    async fn upload_key_packages(
        self: Rc<Self>,
        params: session::UploadKeyPackagesParams,
        _: session::UploadKeyPackagesResults,
    ) -> Result<(), capnp::Error> {
        self.check_alive()?;
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let one_time = p
            .get_one_time()
            .map_err(bad_params)?
            .iter()
            .map(|d| d.map(|d| d.to_vec()).map_err(bad_params))
            .collect::<Result<Vec<_>, _>>()?;
        let last_resort = p.get_last_resort().map_err(bad_params)?.to_vec();
        let hybrid = p.get_hybrid_public_key().map_err(bad_params)?.to_vec();
        self.ctx.disk.check("a KeyPackage upload")?;
        let device = self.terms.identity;
        // Validation is CPU work: off the RPC thread.
        let checked = blocking(move || check_upload(device, one_time, last_resort, hybrid))
            .await?
            .map_err(auth_refusal)?;
        self.ctx
            .auth
            .store_upload(checked)
            .await
            .map_err(auth_refusal)
    }

    async fn commit(
        self: Rc<Self>,
        params: session::CommitParams,
        mut results: session::CommitResults,
    ) -> Result<(), capnp::Error> {
        self.check_alive()?;
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let group_id = p.get_group_id().map_err(bad_params)?;
        check_commit_call(
            group_id,
            p.get_mls_commit().map_err(bad_params)?,
            p.get_epoch(),
        )?;
        let deliveries = self.deliveries(p.get_deliveries().map_err(bad_params)?)?;
        let members = self.members(p.get_members().map_err(bad_params)?)?;
        self.ctx
            .rates
            .enqueue_many(
                &self.terms.identity.0,
                self.remote.ip(),
                deliveries.len().max(1),
            )
            .map_err(rate_limited)?;
        let count = deliveries.len() as u64;
        let seqs = self
            .ctx
            .groups
            .commit(
                group_id,
                p.get_epoch(),
                self.terms.identity,
                members,
                deliveries,
            )
            .await
            .map_err(WireError::from)?;
        metrics::counter!(crate::telemetry::ENQUEUES_TOTAL).increment(count);
        write_seqs(&seqs, results.get().init_seqs(seqs.len() as u32));
        Ok(())
    }

    async fn logout(
        self: Rc<Self>,
        _: session::LogoutParams,
        _: session::LogoutResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        let Some(hash) = self.terms.token_hash else {
            return Err(refuse(
                ErrorCode::BadRequest,
                "this session did not come from a login",
            ));
        };
        self.ctx.auth.logout(hash).await.map_err(auth_refusal)
    }

    async fn set_access_key(
        self: Rc<Self>,
        params: session::SetAccessKeyParams,
        _: session::SetAccessKeyResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        let hash: [u8; 32] = params
            .get()
            .map_err(bad_params)?
            .get_access_key_hash()
            .map_err(bad_params)?
            .try_into()
            .map_err(|_| {
                refuse(
                    ErrorCode::BadRequest,
                    "accessKeyHash must be 32 bytes (SHA-256)",
                )
            })?;
        self.ctx
            .auth
            .set_access_key(self.terms.identity, hash)
            .await
            .map_err(auth_refusal)
    }

    async fn logout_everywhere(
        self: Rc<Self>,
        _: session::LogoutEverywhereParams,
        mut results: session::LogoutEverywhereResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        if !self
            .terms
            .proof
            .may_act_for_the_account(std::time::Instant::now())
        {
            return Err(refuse(
                ErrorCode::Unauthorized,
                "logging out everywhere needs the account password: log in again first",
            ));
        }
        let ended = self
            .ctx
            .auth
            .logout_everywhere(self.terms.identity)
            .await
            .map_err(auth_refusal)?;
        results
            .get()
            .set_sessions_ended(u32::try_from(ended).unwrap_or(u32::MAX));
        Ok(())
    }

    async fn change_password_start(
        self: Rc<Self>,
        params: session::ChangePasswordStartParams,
        mut results: session::ChangePasswordStartResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        self.check_password_fresh("changing the password")?;
        let request = params
            .get()
            .map_err(bad_params)?
            .get_request()
            .map_err(bad_params)?;
        let response = self
            .ctx
            .auth
            .change_password_start(self.terms.identity, request)
            .map_err(auth_refusal)?;
        results.get().set_response(&response);
        Ok(())
    }

    async fn change_password_finish(
        self: Rc<Self>,
        params: session::ChangePasswordFinishParams,
        mut results: session::ChangePasswordFinishResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        self.check_password_fresh("changing the password")?;
        let upload = params
            .get()
            .map_err(bad_params)?
            .get_upload()
            .map_err(bad_params)?;
        let ended = self
            .ctx
            .auth
            .change_password_finish(self.terms.identity, upload, self.terms.token_hash)
            .await
            .map_err(auth_refusal)?;
        results
            .get()
            .set_sessions_ended(u32::try_from(ended).unwrap_or(u32::MAX));
        Ok(())
    }

    async fn remove_device(
        self: Rc<Self>,
        params: session::RemoveDeviceParams,
        _: session::RemoveDeviceResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        let device = IdentityKey::from_wire(
            params
                .get()
                .map_err(bad_params)?
                .get_identity_key()
                .map_err(bad_params)?,
            "identityKey",
        )?;
        if !self
            .terms
            .proof
            .may_act_for_the_account(std::time::Instant::now())
        {
            return Err(refuse(
                ErrorCode::Unauthorized,
                "removing a device needs the account password: log in again first",
            ));
        }
        self.ctx
            .auth
            .remove_device(self.terms.identity, device)
            .await
            .map_err(auth_refusal)?;
        // The device is gone from the directory: nothing new reaches its inbox;
        // delete what was queued.
        self.ctx
            .registry
            .purge(device)
            .await
            .map_err(WireError::from)?;
        Ok(())
    }

    async fn key_package_status(
        self: Rc<Self>,
        _: session::KeyPackageStatusParams,
        mut results: session::KeyPackageStatusResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        let auth = self.ctx.auth.clone();
        let device = self.terms.identity;
        let (remaining, served) = spawned(async move { auth.key_package_status(&device).await })
            .await?
            .map_err(auth_refusal)?;
        let mut r = results.get();
        r.set_one_time_remaining(remaining);
        r.set_last_resort_served(served);
        Ok(())
    }

    async fn send_group(
        self: Rc<Self>,
        params: session::SendGroupParams,
        mut results: session::SendGroupResults,
    ) -> Result<(), capnp::Error> {
        self.check_alive()?;
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let group_id = p.get_group_id().map_err(bad_params)?;
        check_group_id(group_id).map_err(commit_refusal)?;
        let body = p.get_body().map_err(bad_params)?;
        check_payload(&self.ctx, body)?;
        let named = self.recipients(p.get_recipients().map_err(bad_params)?)?;
        self.charge_fanout(named.len())?;
        let outcomes = self
            .ctx
            .groups
            .send(group_id, self.terms.identity, body.to_vec(), named)
            .await
            .map_err(WireError::from)?;
        let stored = outcomes.iter().filter(|(_, o)| o.is_ok()).count() as u64;
        metrics::counter!(crate::telemetry::ENQUEUES_TOTAL).increment(stored);
        let mut list = results.get().init_outcomes(outcomes.len() as u32);
        for (i, (who, outcome)) in outcomes.iter().enumerate() {
            let mut o = list.reborrow().get(i as u32);
            o.set_recipient(&who.0);
            match outcome {
                Ok(seq) => o.set_seq(*seq),
                Err(refusal) => o.set_refused(
                    WireError::new(refusal.code(), refusal.to_string())
                        .to_string()
                        .as_str(),
                ),
            }
        }
        Ok(())
    }

    async fn commit_group(
        self: Rc<Self>,
        params: session::CommitGroupParams,
        mut results: session::CommitGroupResults,
    ) -> Result<(), capnp::Error> {
        self.check_alive()?;
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let group_id = p.get_group_id().map_err(bad_params)?;
        let header = check_commit_call(
            group_id,
            p.get_mls_commit().map_err(bad_params)?,
            p.get_epoch(),
        )?;
        let group_info = check_group_info(
            p.get_group_info().map_err(bad_params)?,
            group_id,
            p.get_epoch(),
        )
        .map_err(commit_refusal)?;
        // An external commit's committer joins from outside: its account's
        // devices vouch for it (the fence checks one of them is a member).
        let joining = header.external.then(|| {
            self.ctx
                .auth
                .devices_of_account(&self.terms.identity)
                .into_iter()
                .map(|d| d.0)
                .collect()
        });
        let members = self.members(p.get_members().map_err(bad_params)?)?;
        if let Some(info) = &group_info {
            let registered = members
                .iter()
                .filter(|m| self.ctx.auth.accepts_inbox(&IdentityKey(**m)))
                .count();
            check_group_info_quota(info.len(), registered).map_err(commit_refusal)?;
        }
        let mut bodies = Vec::with_capacity(3);
        for body in [
            p.get_commit_body(),
            p.get_welcome_body(),
            p.get_receipt_body(),
        ] {
            let body = body.map_err(bad_params)?;
            check_payload(&self.ctx, body)?;
            bodies.push(body.to_vec());
        }
        let parts = self.recipients(p.get_parts().map_err(bad_params)?)?;
        let count = parts.len();
        let parts: std::collections::BTreeMap<[u8; 32], Vec<u8>> = parts.into_iter().collect();
        if parts.len() != count {
            return Err(refuse(
                ErrorCode::BadRequest,
                "a part is given twice for one recipient",
            ));
        }
        self.charge_fanout(members.len())?;
        let [commit_body, welcome_body, receipt_body]: [Vec<u8>; 3] =
            bodies.try_into().expect("three bodies");
        let delivered = self
            .ctx
            .groups
            .commit_shared(
                group_id,
                SharedCommit {
                    epoch: p.get_epoch(),
                    committer: self.terms.identity,
                    members,
                    commit_body,
                    welcome_body,
                    receipt_body,
                    parts,
                    group_info,
                    joining,
                },
            )
            .await
            .map_err(WireError::from)?;
        metrics::counter!(crate::telemetry::ENQUEUES_TOTAL).increment(delivered as u64);
        results.get().set_delivered(delivered);
        Ok(())
    }

    async fn subscribe(
        self: Rc<Self>,
        params: session::SubscribeParams,
        _: session::SubscribeResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        let p = params.get().map_err(bad_params)?;
        let receiver = p.get_receiver().map_err(bad_params)?;
        let now = std::time::Instant::now();
        if let Some(at) = self.subscribed_at.get()
            && now.duration_since(at) < SUBSCRIBE_INTERVAL
        {
            return Err(refuse(
                ErrorCode::RateLimited,
                "one subscription per second per session; retry shortly",
            ));
        }
        self.subscribed_at.set(Some(now));
        // The last subscription stops before this one starts: one at a time.
        let mut slot = self.push.borrow_mut();
        slot.take();
        *slot = Some(push::Subscription::start(
            self.ctx.clone(),
            self.budget.clone(),
            self.terms,
            receiver,
            p.get_after(),
        ));
        Ok(())
    }
}

/// A malformed commit call: `TOO_LARGE` for its size, `BAD_REQUEST` otherwise.
/// A commit call's group id and clear MLS header, checked against each other.
fn check_commit_call(
    group_id: &[u8],
    mls_commit: &[u8],
    epoch: u64,
) -> Result<CommitHeader, capnp::Error> {
    check_group_id(group_id).map_err(commit_refusal)?;
    check_commit_header(mls_commit, group_id, epoch).map_err(commit_refusal)
}

/// A list of identity keys (`what` names them in a refusal), at most as many as
/// a group has members (`TOO_LARGE`).
fn identity_keys(
    list: capnp::data_list::Reader<'_>,
    what: &str,
) -> Result<std::collections::BTreeSet<[u8; 32]>, capnp::Error> {
    if list.len() as usize > MAX_DELIVERIES {
        return Err(commit_refusal(CommitCallRefusal::TooManyMembers));
    }
    list.iter()
        .map(|k| Ok(IdentityKey::from_wire(k.map_err(bad_params)?, what)?.0))
        .collect()
}

/// What directory entries take in a reply: ~1.2 KiB each (a hybrid key and a
/// name), to reserve in the connection's reply budget before writing them.
fn member_entry_bytes(entries: &[crate::auth::MemberEntry]) -> u64 {
    entries
        .iter()
        .map(|m| 64 + m.username.len() as u64 + m.hybrid_public_key.len() as u64)
        .sum()
}

fn write_member_entries(
    entries: &[crate::auth::MemberEntry],
    mut list: capnp::struct_list::Builder<'_, quicnprotochat_wire::node_capnp::member_entry::Owned>,
) {
    for (i, m) in entries.iter().enumerate() {
        let mut e = list.reborrow().get(i as u32);
        e.set_identity_key(&m.identity_key.0);
        e.set_username(&m.username);
        e.set_hybrid_public_key(&m.hybrid_public_key);
    }
}

fn commit_refusal(e: CommitCallRefusal) -> capnp::Error {
    refuse(e.code(), e.to_string())
}
