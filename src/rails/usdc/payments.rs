//! Deciding and signing a payment: read the 402, choose what to pay, sign it, and have the ledger
//! commit the hold and the signed payload together; one payment per (agent, idempotency key).

use alloy_primitives::{Address, B256, U256};
use reqwest::Url;
use sha2::{Digest, Sha256};

use super::Usdc;
use super::chain::Chain;
use super::deferred;
use super::eip3009::Transfer;
use super::mpp;
use super::proxy::{check_call, check_url, destination_refused, host_of};
use super::store::{PaymentRow, corrupt, now_ms};
use super::views::{AuthorizeRequest, Authorized, FetchOutcome, FetchRequest, PaymentCheck, PaymentView};
use super::x402::{self, Challenge, Offer};
use crate::domain::authorization::{AuthRequest, DeclineReason, Merchant, NamedBy, Rail, Recipient};
use crate::domain::ids::{AgentId, PaymentId};
use crate::domain::ledger::{HoldStatus, PaymentProtocol, PaymentStatus, Source};
use crate::domain::money::{MAX_AMOUNT, Money};
use crate::error::{Error, ErrorCode, Result};
use crate::ledger::{AuthOutcome, Authorize, Movement, Payer, Target};

/// The payment requirements to pay, and where.
pub(super) struct Purchase {
    pub(super) url: Url,
    pub(super) offer: Offer,
    pub(super) protocol: Protocol,
    /// Who named these requirements: the server, or the agent handing them in.
    pub(super) named_by: NamedBy,
    pub(super) trace_id: Option<String>,
    pub(super) max_amount: Option<i64>,
    pub(super) request_hash: String,
    /// The ledger's idempotency key for this decision.
    pub(super) external_id: String,
    /// The sealed fetch to replay if the payment needs a person's approval (fetches only).
    pub(super) deferred: Option<String>,
}

/// How the payment is answered: the 402's protocol, and what its payload echoes.
pub(super) enum Protocol {
    X402 { version: u8, resource: Option<serde_json::Value> },
    Mpp(mpp::Challenge),
}

/// What `sign` came to: a stored payment (and whether this call stored it), or a wait for the
/// named approval.
#[allow(clippy::large_enum_variant)] // one per request, moved once: boxing saves nothing
pub(super) enum Signed {
    Payment { row: PaymentRow, ours: bool, outcome: AuthOutcome },
    Awaiting(String),
}

impl Usdc {
    /// Calls `url`; on an x402 402, pays it if the policy allows and calls again with the payment.
    /// A payment that needs a person's approval waits for one, and is then paid by spendgate.
    pub async fn fetch(&self, agent: &AgentId, key: &str, input: FetchRequest) -> Result<FetchOutcome> {
        self.fetch_as(agent, key, input, None).await
    }

    /// `approval`: the approval this fetch runs under (spendgate paying a deferred fetch), which
    /// gives its decision an idempotency key of its own beside the declined attempt's.
    pub(super) async fn fetch_as(
        &self,
        agent: &AgentId,
        key: &str,
        input: FetchRequest,
        approval: Option<&str>,
    ) -> Result<FetchOutcome> {
        let master = self.master()?;
        let key = idempotency_key(key)?;
        let call = check_call(&input)?;
        let max_amount = check_max_amount(input.max_amount)?;
        let sealed = deferred::seal(master, agent, &key, &input);
        let trace_id = check_trace(input.trace_id)?;
        let snapshot = self.agent(agent).await?;
        // Contact only hosts the policy, or a mandate a person approved, lets the agent pay: a host
        // outside them is never called.
        let host = host_of(&call.url);
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let mandated = snapshot.value.allowances.iter().any(|a| a.mandates_host(&host, now_ms));
        if !snapshot.value.policy.x402_allows_host(&host) && !mandated {
            crate::refusals::refused("x402 host not allowed", &host, agent.as_str(), "not in x402.allow_hosts");
            return Err(refused(
                ErrorCode::Declined(DeclineReason::HostNotAllowed),
                &format!(
                    "{host} is not in the agent's x402.allow_hosts (rule agent.x402.allow_hosts); it was not contacted"
                ),
            ));
        }
        // Before the retry path too: a payment signed earlier is not re-sent to a destination now
        // refused (`send` checks again, and the resolver checks every name it resolves).
        self.inner.settings.destinations.check_url(&call.url).map_err(destination_refused)?;
        let _slot = self.inner.fetches.take(agent)?;
        let request_hash = hash(&["fetch", call.method.as_str(), call.url.as_str()]);
        let _one_at_a_time = self.inner.in_flight.lock(format!("{agent}:{key}")).await;

        if let Some(previous) = self.find_payment(agent, &key).await? {
            return self.resume(previous, &request_hash, &call).await.map(FetchOutcome::Answered);
        }
        let first = self.send(&call, None).await.map_err(|e| e.into_error(&call.url, None))?;
        if first.status != 402 {
            return Ok(FetchOutcome::Answered(first.into_fetched(None)));
        }
        let www_authenticate = first.headers_named("www-authenticate");
        let challenge = x402::challenge(first.header("payment-required"), &www_authenticate, &first.body);
        let offered_mpp = mpp::challenges(&www_authenticate);
        // x402 when it offers a requirement spendgate can pay, else MPP: one is chosen, never both.
        let (offer, protocol) = match challenge {
            None => return Ok(FetchOutcome::Answered(first.into_fetched(None))),
            Some(Challenge::X402 { version, accepts, resource }) => match self.choose(version, &accepts) {
                Ok(offer) => (offer, Protocol::X402 { version, resource }),
                Err(refusal) => self.choose_mpp(&offered_mpp).map_err(|_| refusal)?,
            },
            Some(Challenge::Mpp) => self.choose_mpp(&offered_mpp)?,
        };
        let external_id = match approval {
            None => format!("{agent}:{key}"),
            Some(approval) => format!("{agent}:{key}:{approval}"),
        };
        let url = call.url.clone();
        let purchase = Purchase {
            url,
            offer,
            protocol,
            named_by: NamedBy::Server,
            trace_id,
            max_amount,
            request_hash: request_hash.clone(),
            external_id,
            deferred: Some(sealed),
        };
        match self.sign(agent, &key, purchase).await? {
            Signed::Awaiting(approval) => self.deferred_status(agent, &approval).await.map(FetchOutcome::Deferred),
            // Another process signed for this key first: its payload is the one that goes.
            Signed::Payment { row, ours: false, .. } => {
                self.resume(row, &request_hash, &call).await.map(FetchOutcome::Answered)
            }
            Signed::Payment { row, ours: true, outcome } => {
                self.deliver(row, &call, true, Some(&outcome)).await.map(FetchOutcome::Answered)
            }
        }
    }

    /// What a payment of `amount` to the URL's host would be answered now, recording and signing
    /// nothing. The recipient is taken as the server would name it in its 402.
    /// `by_agent`: the agent's own key asks (one dry run at a time).
    pub async fn dry_run(&self, agent: &AgentId, input: PaymentCheck, by_agent: bool) -> Result<AuthOutcome> {
        let url = check_url(&input.url)?;
        let trace_id = check_trace(input.trace_id)?;
        if !(1..=MAX_AMOUNT).contains(&input.amount) {
            return Err(Error::validation(format!("amount must be 1 to {MAX_AMOUNT} cents")));
        }
        let recipient = match input.pay_to.as_deref() {
            Some(account) => {
                let (network, address) = caip10(account).ok_or_else(|| {
                    Error::validation("pay_to must be a CAIP-10 account: eip155:<chain id>:0x<40 hex digits>")
                })?;
                Recipient::new(network, address, NamedBy::Server)
            }
            // No list can hold it: a policy that lists recipients declines, one that does not trusts the server.
            None => Recipient { account: "unknown".into(), named_by: NamedBy::Server },
        };
        self.agent_exists(agent).await?;
        let request = AuthRequest {
            rail: Rail::Usdc,
            amount: input.amount,
            currency: "USD".into(),
            merchant: Merchant { id: None, name: host_of(&url), mcc: None, country: None },
            trace_id,
            max_amount: None,
            recipient: Some(recipient),
        };
        let auth = Authorize {
            source: Source::X402,
            external_id: PaymentId::generate().to_string(),
            payer: Payer::Wallet(agent.clone()),
            request,
            deferred: None,
            payment: None,
            onchain_short: false,
        };
        self.inner.ledger.dry_run(auth, by_agent).await
    }

    /// Decides and signs a payment for the agent to send itself.
    pub async fn authorize(&self, agent: &AgentId, key: &str, input: AuthorizeRequest) -> Result<Authorized> {
        self.master()?;
        let key = idempotency_key(key)?;
        let url = check_url(&input.url)?;
        let max_amount = check_max_amount(input.max_amount)?;
        let trace_id = check_trace(input.trace_id)?;
        self.agent_exists(agent).await?;
        let (version, accepts, resource) = match &input.payment_required {
            serde_json::Value::String(header) => x402::challenge(Some(header), &[], b""),
            doc => x402::required(doc),
        }
        .and_then(|c| match c {
            Challenge::X402 { version, accepts, resource } => Some((version, accepts, resource)),
            Challenge::Mpp => None,
        })
        .ok_or_else(|| {
            Error::validation(
                "payment_required must be the PAYMENT-REQUIRED header value (x402 v2) or the 402's JSON body (x402 v1)",
            )
        })?;
        let request_hash = hash(&["authorize", url.as_str(), &input.payment_required.to_string()]);
        let _one_at_a_time = self.inner.in_flight.lock(format!("{agent}:{key}")).await;
        // No look-up first: a key used before is a retry the ledger recognizes, and then the
        // payment made the first time is the answer (nothing signed now is ever stored or sent).
        let offer = self.choose(version, &accepts)?;
        let external_id = format!("{agent}:{key}");
        let purchase = Purchase {
            url,
            offer,
            protocol: Protocol::X402 { version, resource },
            named_by: NamedBy::Agent,
            trace_id,
            max_amount,
            request_hash: request_hash.clone(),
            external_id,
            deferred: None,
        };
        let (row, cost, remaining) = match self.sign(agent, &key, purchase).await? {
            Signed::Payment { row, ours: true, outcome } => {
                let (cost, remaining) = costs(&outcome)?;
                (row, cost, remaining)
            }
            Signed::Payment { row, ours: false, .. } => {
                same_request(&row, &request_hash)?;
                let (cost, remaining) = self.amounts_of(&row).await?;
                (row, cost, remaining)
            }
            Signed::Awaiting(_) => {
                return Err(Error::Internal("a payment with nothing to defer waits for an approval".into()));
            }
        };
        Ok(Authorized {
            header: row.header_name.clone(),
            value: row.header_value.clone(),
            payment: PaymentView::from_row(&row),
            cost,
            remaining,
        })
    }

    /// The MPP challenge to pay, or the refusal that says why none can be.
    fn choose_mpp(&self, challenges: &[mpp::Challenge]) -> Result<(Offer, Protocol)> {
        let now = jiff::Timestamp::now().as_second();
        match mpp::choose(challenges, &self.inner.settings.assets, now) {
            Ok(charge) => Ok((charge.offer, Protocol::Mpp(charge.challenge))),
            Err(why) => Err(refused(
                ErrorCode::UnsupportedPaymentProtocol,
                &format!(
                    "the server asks for MPP (WWW-Authenticate: Payment) in a way spendgate cannot pay ({why}); nothing was signed"
                ),
            )),
        }
    }

    pub(super) fn choose(&self, version: u8, accepts: &[serde_json::Value]) -> Result<Offer> {
        x402::choose(version, accepts, &self.inner.settings.assets).map_err(|why| {
            refused(ErrorCode::NoPayableRequirement, &format!("no payment requirement spendgate can pay: {why}"))
        })
    }

    /// Signs the payment, then has the ledger decide it: an approval commits the hold and the
    /// signed payload in one transaction, so nothing is sent before both are durable and a crash
    /// never leads to a second signature. A decline drops the payload unsent; it is refused,
    /// unless it asks for an approval of a deferrable fetch. On a network spendgate reads, a
    /// payment the wallet cannot cover on the chain is decided without being signed at all.
    pub(super) async fn sign(&self, agent: &AgentId, key: &str, p: Purchase) -> Result<Signed> {
        let master = self.master()?;
        let wallet_row = self.wallet_row(agent).await?;
        let host = host_of(&p.url);
        let request = AuthRequest {
            rail: Rail::Usdc,
            amount: x402::atomic_to_cents(p.offer.amount),
            currency: "USD".into(),
            merchant: Merchant { id: Some(p.offer.pay_to.to_checksum(None)), name: host, mcc: None, country: None },
            trace_id: p.trace_id,
            max_amount: p.max_amount,
            recipient: Some(Recipient::new(p.offer.network.caip2, &p.offer.pay_to.to_checksum(None), p.named_by)),
        };

        let deferrable = p.deferred.is_some();
        // Until this payment is stored, no other payment of this wallet (in this process) reads
        // what the wallet has signed away.
        let _wallet_turn = match self.inner.chains.get(p.offer.network.caip2) {
            Some(chain) => {
                let turn = self.inner.wallet_turns.lock(format!("{}:{}", chain.network, wallet_row.address)).await;
                if self.onchain_short(chain, &wallet_row.address, &p.offer).await? {
                    return self.decline_unsigned(agent, key, p.external_id, p.deferred, request).await;
                }
                Some(turn)
            }
            None => None,
        };

        let wallet = master.open(agent, &wallet_row.sealed_key).map_err(|e| Error::Internal(e.to_string()))?;
        if wallet.address().to_checksum(None) != wallet_row.address {
            return Err(Error::Internal(format!("agent {agent}'s wallet key does not match its stored address")));
        }
        let now = jiff::Timestamp::now().as_second();
        let validity = p.offer.max_timeout_seconds.min(self.inner.settings.max_valid_seconds) as i64;
        // MPP binds the authorization to its challenge by the nonce; x402's is random.
        let nonce = match &p.protocol {
            Protocol::Mpp(challenge) => mpp::nonce(challenge),
            Protocol::X402 { .. } => {
                let mut nonce = B256::ZERO;
                rand::RngCore::fill_bytes(&mut rand::rng(), nonce.as_mut_slice());
                nonce
            }
        };
        let transfer = Transfer {
            from: wallet.address(),
            to: p.offer.pay_to,
            value: p.offer.amount,
            valid_after: (now - 600).max(0) as u64,
            valid_before: (now + validity) as u64,
            nonce,
        };
        let (signature, authorization) =
            transfer.sign(&wallet, &p.offer.domain).map_err(|e| Error::Internal(e.to_string()))?;
        drop(wallet);
        let (header_name, header_value, version, protocol) = match &p.protocol {
            Protocol::X402 { version, resource } => {
                let (name, value) =
                    x402::payment_header(*version, &p.offer, resource.as_ref(), signature, &authorization);
                (name, value, i32::from(*version), PaymentProtocol::X402)
            }
            Protocol::Mpp(challenge) => {
                let (name, value) = mpp::credential(challenge, &p.offer, signature, &authorization);
                (name, value, 0, PaymentProtocol::Mpp)
            }
        };
        let now_ms = now_ms();
        let mut row = PaymentRow {
            id: PaymentId::generate().to_string(),
            agent_id: agent.to_string(),
            idempotency_key: key.to_owned(),
            request_hash: p.request_hash,
            // Set by the ledger to the hold's id.
            authorization_id: String::new(),
            url: p.url.to_string(),
            x402_version: version,
            protocol,
            network: p.offer.network.caip2.to_owned(),
            asset: p.offer.asset.to_checksum(None),
            pay_to: p.offer.pay_to.to_checksum(None),
            amount: p.offer.amount.to_string(),
            payer: wallet_row.address,
            valid_before: transfer.valid_before as i64,
            header_name: header_name.to_owned(),
            header_value,
            status: PaymentStatus::Signed,
            transaction_hash: None,
            error: None,
            response_status: None,
            response_headers: None,
            response_body: None,
            created_at: now_ms,
            updated_at: now_ms,
        };

        let auth = Authorize {
            source: Source::X402,
            external_id: p.external_id,
            payer: Payer::Wallet(agent.clone()),
            request,
            deferred: p.deferred,
            payment: Some(Box::new(row.clone())),
            onchain_short: false,
        };
        let outcome = self.inner.ledger.authorize(auth).await;
        let Some(authorization_id) = outcome.authorization_id.clone().filter(|_| outcome.approved) else {
            return declined(&outcome, deferrable);
        };
        row.authorization_id = authorization_id.clone();
        if outcome.payment_stored {
            return Ok(Signed::Payment { row, ours: true, outcome });
        }
        if !outcome.replayed {
            // A fresh hold, but a payment under this key was made by another decision: that one
            // stands, and this hold must not stay behind without a payment.
            let void = Movement::Reverse { amount: None, currency: None };
            let target = Target::Id(authorization_id.clone());
            self.inner.ledger.movement(target, &format!("{authorization_id}:duplicate"), void).await?;
        }

        // A retry of a decision already made: its payment (made by this or another process) goes.
        if let Some(earlier) = self.find_payment(agent, key).await? {
            return Ok(Signed::Payment { row: earlier, ours: false, outcome });
        }
        // An earlier attempt's hold with no payment: it must still stand to pay against it.
        let id = authorization_id.clone();
        let hold = self.inner.ledger.authorization(&id).await?;
        if hold.is_none_or(|h| h.status != HoldStatus::Pending) {
            return Err(Error::coded(
                ErrorCode::IdempotencyConflict,
                format!("the hold {authorization_id} of this key's earlier attempt was released; use a new key"),
            ));
        }
        let stored = self.inner.records.insert_payment(row).await;
        match stored {
            Ok((row, ours)) => Ok(Signed::Payment { row, ours, outcome }),
            // Another process stored a payment for this key at the same moment: that one goes.
            Err(Error::Coded { code: ErrorCode::AlreadyExists, .. }) => match self.find_payment(agent, key).await? {
                Some(winner) => Ok(Signed::Payment { row: winner, ours: false, outcome }),
                None => Err(Error::Internal("a payment vanished after a conflicting insert".into())),
            },
            Err(e) => {
                // Nothing was sent: the hold must not outlive the payload it was for.
                let void = Movement::Reverse { amount: None, currency: None };
                let target = Target::Id(authorization_id.clone());
                if let Err(v) = self.inner.ledger.movement(target, &format!("{authorization_id}:unsigned"), void).await
                {
                    tracing::error!(error = %v, authorization = %authorization_id, "could not void the hold of an unstored payment");
                }
                Err(e)
            }
        }
    }
}

impl Usdc {
    /// Whether the wallet holds less of the offer's token on the chain than the offer asks, once
    /// what it has signed and not seen settle is set aside. What is signed is read before the
    /// balance: a payment settling between the two is then counted twice, never not at all.
    async fn onchain_short(&self, chain: &Chain, payer: &str, offer: &Offer) -> Result<bool> {
        let owner: Address = payer.parse().map_err(|_| corrupt("wallet address", payer))?;
        let (network, asset, now) = (chain.network, offer.asset.to_checksum(None), jiff::Timestamp::now().as_second());
        chain.check_chain_id().await?;
        let in_flight = self.inner.records.unsettled_sum(payer, network, &asset, now).await?;
        let in_flight = U256::from(u64::try_from(in_flight).map_err(|_| corrupt("payments in flight", payer))?);
        let held = chain.balance(offer.asset, owner, None).await?;
        let short = held.saturating_sub(in_flight) < offer.amount;
        if short {
            tracing::info!(wallet = %owner, network, %held, %in_flight, asked = %offer.amount, "payment beyond the wallet's funds on the chain");
        }
        Ok(short)
    }

    /// The decision on a payment the wallet cannot make on the chain: recorded as the policy would
    /// decide it, with an approval becoming `insufficient_onchain_funds`. Nothing is signed.
    async fn decline_unsigned(
        &self,
        agent: &AgentId,
        key: &str,
        external_id: String,
        deferred: Option<String>,
        request: AuthRequest,
    ) -> Result<Signed> {
        let deferrable = deferred.is_some();
        let auth = Authorize {
            source: Source::X402,
            external_id,
            payer: Payer::Wallet(agent.clone()),
            request,
            deferred,
            payment: None,
            onchain_short: true,
        };
        let outcome = self.inner.ledger.authorize(auth).await;
        let Some(authorization_id) = outcome.authorization_id.clone().filter(|_| outcome.approved) else {
            return declined(&outcome, deferrable);
        };
        // A retry of a decision approved before the wallet ran short: its payment is the answer.
        if let Some(earlier) = self.find_payment(agent, key).await? {
            return Ok(Signed::Payment { row: earlier, ours: false, outcome });
        }
        let void = Movement::Reverse { amount: None, currency: None };
        self.inner
            .ledger
            .movement(Target::Id(authorization_id.clone()), &format!("{authorization_id}:unsigned"), void)
            .await?;
        Err(refused(
            ErrorCode::Declined(DeclineReason::InsufficientOnchainFunds),
            "the wallet holds too little on the chain for this payment; nothing was signed",
        ))
    }
}

/// A decision that signs nothing, as the agent hears it: a wait for a person's approval (a
/// deferrable fetch), or the decline and its reason.
fn declined(outcome: &AuthOutcome, deferrable: bool) -> Result<Signed> {
    if let (true, Some(DeclineReason::ApprovalRequired), Some(id)) = (deferrable, outcome.reason, &outcome.approval_id)
    {
        return Ok(Signed::Awaiting(id.clone()));
    }
    // A decline always has its reason; failing closed, one without would be an internal error.
    let reason = outcome.reason.unwrap_or(DeclineReason::InternalError);
    let rule = outcome.rule.as_deref().map(|r| format!(" (rule {r})")).unwrap_or_default();
    let asked = match &outcome.approval_id {
        Some(id) => format!("; approval {id} was requested: once approved, retry with a new Idempotency-Key"),
        None => String::new(),
    };
    Err(refused(
        ErrorCode::Declined(reason),
        &format!("the payment was declined: {reason}{rule}; nothing was signed{asked}"),
    ))
}

pub(super) fn costs(outcome: &AuthOutcome) -> Result<(Money, Money)> {
    match (&outcome.amount.cap, &outcome.available) {
        (Some(cost), Some(remaining)) => Ok((*cost, *remaining)),
        _ => Err(Error::Internal("an approved payment without amounts".into())),
    }
}

/// A payment spendgate will not make (402).
pub(super) fn refused(code: ErrorCode, message: &str) -> Error {
    Error::coded(code, message)
}

pub(super) fn same_request(row: &PaymentRow, request_hash: &str) -> Result<()> {
    if row.request_hash == request_hash {
        return Ok(());
    }
    Err(Error::coded(
        ErrorCode::IdempotencyConflict,
        format!("this Idempotency-Key was used for another request (payment {})", row.id),
    ))
}

pub(super) fn hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

pub(super) fn idempotency_key(key: &str) -> Result<String> {
    let key = key.trim();
    let ok = (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(Error::validation("the Idempotency-Key header is required: 1 to 255 printable characters"));
    }
    Ok(key.to_owned())
}

pub(super) fn check_max_amount(max: Option<i64>) -> Result<Option<i64>> {
    match max {
        Some(m) if m < 0 => {
            Err(Error::validation("max_amount must be 0 or more (minor units of the agent's currency)"))
        }
        other => Ok(other),
    }
}

/// `eip155:<chain id>:0x<address>` as (network, address).
fn caip10(account: &str) -> Option<(&str, &str)> {
    let (network, address) = account.rsplit_once(':')?;
    let chain = network.strip_prefix("eip155:")?;
    let hex = address.strip_prefix("0x")?;
    let valid = !chain.is_empty()
        && chain.len() <= 32
        && chain.bytes().all(|b| b.is_ascii_digit())
        && hex.len() == 40
        && hex.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then_some((network, address))
}

pub(super) fn check_trace(trace: Option<String>) -> Result<Option<String>> {
    match trace {
        Some(t) if t.trim().is_empty() || t.chars().count() > 200 => {
            Err(Error::validation("trace_id must be 1 to 200 characters"))
        }
        other => Ok(other),
    }
}
