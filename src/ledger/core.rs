//! The ledger's arithmetic, pure: an authorization's hold and its agent's balance as a state
//! machine. Each transition checks what it may do, changes both, and returns the transfers it
//! made, or a typed refusal and changes nothing. No I/O: the writer loads, applies a step here,
//! and saves what it returns.
//!
//! Invariants, asserted after every step (and driven through random histories by the tests):
//! - nothing is negative; what counts against limits is what is held plus what is posted;
//! - a refund never exceeds what was posted;
//! - only a pending hold holds money; a declined authorization never moved any; a voided or
//!   expired one posted nothing;
//! - a hold is released at most once: no transfer takes more out of it than it holds, and a
//!   capture beyond it is recorded as `excess`, never as `post`;
//! - across an agent's holds, the balance's held, spent and refunded are the sums of theirs, so
//!   funded + refunded − held − spent is what is available;
//! - no money from nowhere: an agent is funded only from its currency's treasury, and only with
//!   what the treasury has; a drain returns only what is available, never what is held. So the
//!   treasury's available plus every agent's funded is what people deposited less what they
//!   withdrew, and no agent's funded goes below what it spent net of refunds.

use crate::domain::ledger::{Balance, HoldStatus, TransferKind, Treasury};
use crate::domain::policy::TopUpRule;

/// An authorization's money, in minor units of the agent's (cap) currency unless named otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub status: HoldStatus,
    /// What was authorized, in the agent's currency and in the card's: their ratio converts what
    /// counts on the card.
    pub cap_amount: i64,
    pub card_amount: i64,
    pub held: i64,
    pub posted: i64,
    /// What counts against the agent's limits: held + posted (a refund does not restore limits).
    pub counted: i64,
    /// The same in the card's currency.
    pub counted_card: i64,
    pub refunded: i64,
}

/// One transfer a transition made; `suffix` is appended to the caller's id when one call makes
/// several (a capture's `excess` and its release).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub kind: TransferKind,
    pub amount: i64,
    pub suffix: Option<&'static str>,
}

impl Moved {
    fn new(kind: TransferKind, amount: i64) -> Self {
        Moved { kind, amount, suffix: None }
    }
}

/// Why a transition was refused; nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The authorization was declined: it never held anything.
    Declined,
    /// The hold has nothing left to release or change.
    NothingHeld(HoldStatus),
    /// Refunds would total more than was posted.
    RefundExceedsPosted { posted: i64 },
    /// The treasury has less than the movement asks.
    TreasuryShort { available: i64 },
    /// The agent's available balance would pass its maximum; `room` is what it may still take.
    OverMaxBalance { room: i64 },
    /// A drain asks for more than is available (held money is never drained).
    NotAvailable { available: i64 },
}

/// How a release ends a hold that it empties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// A void: by the processor, the agent's caller, or spendgate after a late answer.
    Void,
    /// The expiry sweep.
    Expire,
}

impl Hold {
    /// An approved authorization: `cap` (and `card`, in the card's currency) held.
    pub fn approve(balance: &mut Balance, cap: i64, card: i64) -> Hold {
        let hold = Hold {
            status: HoldStatus::Pending,
            cap_amount: cap,
            card_amount: card,
            held: cap,
            posted: 0,
            counted: cap,
            counted_card: card,
            refunded: 0,
        };
        balance.held += cap;
        hold.assert_valid();
        hold
    }

    /// A declined authorization: the amounts it asked for, nothing held.
    pub fn declined(cap: i64, card: i64) -> Hold {
        Hold {
            status: HoldStatus::Declined,
            cap_amount: cap,
            card_amount: card,
            held: 0,
            posted: 0,
            counted: 0,
            counted_card: 0,
            refunded: 0,
        }
    }

    /// The processor approved what spendgate declined, or answered after spendgate gave up on it:
    /// the authorization becomes a hold of `cap` after all. Only one that never moved money can.
    pub fn approve_after_all(&mut self, balance: &mut Balance, cap: i64, card: i64) -> Result<(), Refusal> {
        if self.held != 0 || self.posted != 0 {
            return Err(Refusal::NothingHeld(self.status));
        }
        *self = Hold::approve(balance, cap, card);
        Ok(())
    }

    /// Captures `amount`: up to what is held is posted, the rest of the hold released, anything
    /// beyond it recorded as excess (the processor has already taken it).
    pub fn capture(&mut self, balance: &mut Balance, amount: i64) -> Result<Vec<Moved>, Refusal> {
        self.not_declined()?;
        let post = amount.min(self.held);
        let excess = amount - post;
        let released = self.held - post;
        balance.held -= self.held;
        balance.spent += amount;
        self.held = 0;
        self.posted += amount;
        self.status = HoldStatus::Posted;
        self.recount();
        let mut moved = vec![Moved::new(TransferKind::Post, post)];
        if excess > 0 {
            moved.push(Moved { suffix: Some(":excess"), ..Moved::new(TransferKind::Excess, excess) });
        }
        if released > 0 {
            moved.push(Moved { suffix: Some(":release"), ..Moved::new(TransferKind::Void, released) });
        }
        self.assert_valid();
        Ok(moved)
    }

    /// Releases up to `amount` of what is held (all of it when `amount` is None).
    pub fn reverse(&mut self, balance: &mut Balance, amount: Option<i64>) -> Result<Moved, Refusal> {
        self.not_declined()?;
        if self.held == 0 {
            return Err(Refusal::NothingHeld(self.status));
        }
        let amount = amount.unwrap_or(self.held).min(self.held);
        Ok(self.release(balance, amount, Release::Void))
    }

    /// Releases all that is held (the expiry sweep, a late answer, a processor's decline of what
    /// spendgate approved).
    pub fn release_all(&mut self, balance: &mut Balance, how: Release) -> Moved {
        self.release(balance, self.held, how)
    }

    fn release(&mut self, balance: &mut Balance, amount: i64, how: Release) -> Moved {
        debug_assert!((0..=self.held).contains(&amount), "a release of {amount} from a hold of {}", self.held);
        let amount = amount.clamp(0, self.held);
        self.held -= amount;
        balance.held -= amount;
        if self.held == 0 {
            self.status = match (self.posted > 0, how) {
                (true, _) => HoldStatus::Posted,
                (false, Release::Expire) => HoldStatus::Expired,
                (false, Release::Void) => HoldStatus::Voided,
            };
        }
        self.recount();
        self.assert_valid();
        let kind = match how {
            Release::Void => TransferKind::Void,
            Release::Expire => TransferKind::Expire,
        };
        Moved::new(kind, amount)
    }

    /// Credits `amount` of what was posted back to the balance; limits are not restored.
    pub fn refund(&mut self, balance: &mut Balance, amount: i64) -> Result<Moved, Refusal> {
        self.not_declined()?;
        if self.refunded + amount > self.posted {
            return Err(Refusal::RefundExceedsPosted { posted: self.posted });
        }
        self.refunded += amount;
        balance.refunded += amount;
        self.assert_valid();
        Ok(Moved::new(TransferKind::Refund, amount))
    }

    /// The processor now holds `total`: less releases the difference; more is recorded as an
    /// `increase` (the processor approved it: a fact) and counts against limits like any hold; the
    /// same total is a void of 0, so that the event's id is spent.
    pub fn adjust(&mut self, balance: &mut Balance, total: i64) -> Result<Moved, Refusal> {
        self.not_declined()?;
        if self.status != HoldStatus::Pending {
            return Err(Refusal::NothingHeld(self.status));
        }
        if total <= self.held {
            return Ok(self.release(balance, self.held - total, Release::Void));
        }
        let more = total - self.held;
        self.held += more;
        balance.held += more;
        self.recount();
        self.assert_valid();
        Ok(Moved::new(TransferKind::Increase, more))
    }

    /// Applies one transfer as it was recorded (a backtest replays history on its own holds): a
    /// capture's post, excess and release arrive as three transfers, each applied in turn.
    pub fn replay(&mut self, balance: &mut Balance, kind: TransferKind, amount: i64) -> Result<(), Refusal> {
        self.not_declined()?;
        match kind {
            TransferKind::Fund
            | TransferKind::TopUp
            | TransferKind::Drain
            | TransferKind::AllocationIn
            | TransferKind::AllocationOut => {}
            TransferKind::Post => {
                let from_hold = amount.min(self.held);
                self.held -= from_hold;
                balance.held -= from_hold;
                self.posted += amount;
                balance.spent += amount;
            }
            TransferKind::Excess => {
                self.posted += amount;
                balance.spent += amount;
            }
            TransferKind::Increase => {
                self.held += amount;
                balance.held += amount;
            }
            TransferKind::Void => drop(self.release(balance, amount.min(self.held), Release::Void)),
            TransferKind::Expire => drop(self.release(balance, amount.min(self.held), Release::Expire)),
            TransferKind::Refund => drop(self.refund(balance, amount)?),
        }
        if self.held == 0 && self.posted > 0 {
            self.status = HoldStatus::Posted;
        }
        self.recount();
        self.assert_valid();
        Ok(())
    }

    fn not_declined(&self) -> Result<(), Refusal> {
        match self.status {
            HoldStatus::Declined => Err(Refusal::Declined),
            _ => Ok(()),
        }
    }

    /// What counts against limits follows what is held and posted; on the card, in proportion.
    fn recount(&mut self) {
        self.counted = self.held + self.posted;
        self.counted_card =
            if self.cap_amount > 0 { scale_up(self.counted, self.card_amount, self.cap_amount) } else { self.counted };
    }

    /// The invariants of one hold (see the module's comment); the balance's are the tests'.
    pub fn violation(&self) -> Option<String> {
        let h = self;
        let fail = |what: &str| Some(format!("{what}: {h:?}"));
        if [h.held, h.posted, h.counted, h.counted_card, h.refunded].iter().any(|&v| v < 0) {
            return fail("a negative amount");
        }
        if h.refunded > h.posted {
            return fail("refunded more than posted");
        }
        match h.status {
            HoldStatus::Declined if h.held + h.posted + h.refunded + h.counted != 0 => {
                fail("a declined authorization moved money")
            }
            HoldStatus::Voided | HoldStatus::Expired if h.held != 0 || h.posted != 0 => {
                fail("a released hold holds or posted")
            }
            HoldStatus::Posted if h.held != 0 || h.posted == 0 => fail("a posted hold still holds, or posted nothing"),
            HoldStatus::Declined => None,
            _ if h.counted != h.held + h.posted => fail("counted is not held + posted"),
            _ => None,
        }
    }

    fn assert_valid(&self) {
        debug_assert_eq!(self.violation(), None);
    }
}

/// Money that backs the treasury, recorded by a person.
pub fn deposit(treasury: &mut Treasury, amount: i64) {
    debug_assert!(amount > 0, "a deposit of {amount}");
    treasury.deposited += amount;
}

/// Money taken out of the treasury: only what no agent has been given.
pub fn withdraw(treasury: &mut Treasury, amount: i64) -> Result<(), Refusal> {
    short(treasury, amount)?;
    treasury.withdrawn += amount;
    Ok(())
}

/// Money from the treasury into the agent's balance, by a person: refused when the treasury has
/// less, or when it would take the available balance past `max_balance`.
pub fn fund(
    treasury: &mut Treasury,
    balance: &mut Balance,
    amount: i64,
    max_balance: Option<i64>,
) -> Result<Moved, Refusal> {
    debug_assert!(amount > 0, "funding of {amount}");
    if let Some(room) = room_under(balance, max_balance)
        && amount > room
    {
        return Err(Refusal::OverMaxBalance { room });
    }
    short(treasury, amount)?;
    Ok(grant(treasury, balance, TransferKind::Fund, amount))
}

/// Available money back to the treasury: all of it (`None`) or `amount`, never what is held.
pub fn drain(treasury: &mut Treasury, balance: &mut Balance, amount: Option<i64>) -> Result<Moved, Refusal> {
    let available = balance.available();
    let amount = amount.unwrap_or(available);
    if amount <= 0 || amount > available {
        return Err(Refusal::NotAvailable { available });
    }
    balance.funded -= amount;
    treasury.returned += amount;
    Ok(Moved::new(TransferKind::Drain, amount))
}

/// What a top-up rule did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopUp {
    /// What the rule asked for: up to `to`, within the day's and month's allowance and the maximum.
    pub wanted: i64,
    /// What the treasury moved (`wanted` unless it was short).
    pub moved: Option<Moved>,
}

impl TopUp {
    /// What the treasury could not cover.
    pub fn short(&self) -> i64 {
        self.wanted - self.moved.map_or(0, |m| m.amount)
    }
}

/// The agent's top-up rule applied now: None when its available balance is not below the line or
/// the rule's allowances are used up; `today` and `this_month` are what top-ups moved already.
pub fn top_up(
    treasury: &mut Treasury,
    balance: &mut Balance,
    rule: &TopUpRule,
    today: i64,
    this_month: i64,
    max_balance: Option<i64>,
) -> Option<TopUp> {
    let available = balance.available();
    if available >= rule.below {
        return None;
    }
    let allowances = [
        Some(rule.to - available),
        rule.max_per_day.map(|max| max - today),
        rule.max_per_month.map(|max| max - this_month),
        room_under(balance, max_balance),
    ];
    let wanted = allowances.into_iter().flatten().min().unwrap_or(0);
    if wanted <= 0 {
        return None;
    }
    let amount = wanted.min(treasury.available().max(0));
    let moved = (amount > 0).then(|| grant(treasury, balance, TransferKind::TopUp, amount));
    Some(TopUp { wanted, moved })
}

/// Applies a recorded movement between the treasury and the agent to its balance alone (a backtest
/// replays the agent's history without its treasury); false for any other transfer.
pub fn replay_funding(balance: &mut Balance, kind: TransferKind, amount: i64) -> bool {
    balance.funded += kind.funding(amount);
    kind.is_funding()
}

/// Available money from one agent to another (a parent to its child, or back): all that is
/// available when `amount` is None; refused past what `from` has available or `to`'s maximum.
pub fn allocate(
    from: &mut Balance,
    to: &mut Balance,
    amount: Option<i64>,
    to_max: Option<i64>,
) -> Result<(Moved, Moved), Refusal> {
    let available = from.available();
    let amount = amount.unwrap_or(available);
    if amount <= 0 || amount > available {
        return Err(Refusal::NotAvailable { available });
    }
    if let Some(room) = room_under(to, to_max)
        && amount > room
    {
        return Err(Refusal::OverMaxBalance { room });
    }
    from.funded -= amount;
    to.funded += amount;
    Ok((Moved::new(TransferKind::AllocationOut, amount), Moved::new(TransferKind::AllocationIn, amount)))
}

fn grant(treasury: &mut Treasury, balance: &mut Balance, kind: TransferKind, amount: i64) -> Moved {
    treasury.granted += amount;
    balance.funded += amount;
    Moved::new(kind, amount)
}

fn short(treasury: &Treasury, amount: i64) -> Result<(), Refusal> {
    let available = treasury.available();
    if amount > available {
        return Err(Refusal::TreasuryShort { available });
    }
    Ok(())
}

/// What the available balance may still take under `max_balance` (None: no maximum).
fn room_under(balance: &Balance, max_balance: Option<i64>) -> Option<i64> {
    max_balance.map(|max| (max - balance.available()).max(0))
}

/// ⌈amount × num / den⌉ without overflow.
pub fn scale_up(amount: i64, num: i64, den: i64) -> i64 {
    let (a, n, d) = (i128::from(amount), i128::from(num), i128::from(den));
    i64::try_from((a * n + d - 1) / d).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// One thing that can happen to an agent's ledger; `hold` picks among the holds made so far.
    #[derive(Debug, Clone)]
    enum Event {
        Deposit(i64),
        Withdraw(i64),
        Fund {
            amount: i64,
            max: Option<i64>,
        },
        Drain(Option<i64>),
        TopUp {
            below: i64,
            to: i64,
            per_day: Option<i64>,
            max: Option<i64>,
        },
        /// To the agent's child, and back.
        Allocate {
            amount: i64,
            max: Option<i64>,
        },
        Reclaim(Option<i64>),
        Approve {
            cap: i64,
            card: i64,
        },
        Decline {
            cap: i64,
        },
        Capture {
            hold: usize,
            amount: i64,
        },
        Reverse {
            hold: usize,
            amount: Option<i64>,
        },
        Expire {
            hold: usize,
        },
        Refund {
            hold: usize,
            amount: i64,
        },
        Adjust {
            hold: usize,
            total: i64,
        },
        ApproveAfterAll {
            hold: usize,
            cap: i64,
        },
    }

    fn event() -> impl Strategy<Value = Event> {
        // Small amounts often, so that captures, refunds and adjustments land on the edges of
        // what is held and posted (equal, one more, one less).
        let amount = prop_oneof![1..4i64, 1..10_000i64];
        let hold = 0..8usize;
        let maybe = || proptest::option::of(prop_oneof![1..4i64, 1..20_000i64]);
        prop_oneof![
            amount.clone().prop_map(Event::Deposit),
            amount.clone().prop_map(Event::Withdraw),
            (amount.clone(), maybe()).prop_map(|(amount, max)| Event::Fund { amount, max }),
            maybe().prop_map(Event::Drain),
            (amount.clone(), maybe()).prop_map(|(amount, max)| Event::Allocate { amount, max }),
            maybe().prop_map(Event::Reclaim),
            (amount.clone(), 0..5_000i64, maybe(), maybe()).prop_map(|(below, more, per_day, max)| Event::TopUp {
                below,
                to: below + more,
                per_day,
                max
            }),
            (amount.clone(), amount.clone()).prop_map(|(cap, card)| Event::Approve { cap, card }),
            amount.clone().prop_map(|cap| Event::Decline { cap }),
            (hold.clone(), amount.clone()).prop_map(|(hold, amount)| Event::Capture { hold, amount }),
            (hold.clone(), proptest::option::of(amount.clone()))
                .prop_map(|(hold, amount)| Event::Reverse { hold, amount }),
            hold.clone().prop_map(|hold| Event::Expire { hold }),
            (hold.clone(), amount.clone()).prop_map(|(hold, amount)| Event::Refund { hold, amount }),
            (hold.clone(), prop_oneof![0..4i64, 0..10_000i64]).prop_map(|(hold, total)| Event::Adjust { hold, total }),
            (hold, amount).prop_map(|(hold, cap)| Event::ApproveAfterAll { hold, cap }),
        ]
    }

    /// The ledger as the writer keeps it: a balance, its holds, and every transfer made, per hold.
    #[derive(Default)]
    struct Ledger {
        treasury: Treasury,
        balance: Balance,
        holds: Vec<Hold>,
        transfers: Vec<Vec<Moved>>,
        /// The agent's child: funded only by allocations from it.
        child: Balance,
        /// What people put in and took out of the treasury; what reached the agent, net.
        deposited: i64,
        funded: i64,
        topped_up: i64,
        /// Per hold: what its approvals held (an approval after all adds one).
        approved: Vec<i64>,
    }

    impl Ledger {
        fn apply(&mut self, event: &Event) -> Result<(), Refusal> {
            let n = self.holds.len();
            let pick = |i: usize| if n == 0 { None } else { Some(i % n) };
            let (t, b) = (&mut self.treasury, &mut self.balance);
            let moved: Vec<Moved> = match *event {
                Event::Deposit(amount) => {
                    deposit(t, amount);
                    self.deposited += amount;
                    return Ok(());
                }
                Event::Withdraw(amount) => {
                    withdraw(t, amount)?;
                    self.deposited -= amount;
                    return Ok(());
                }
                Event::Fund { amount, max } => {
                    self.funded += fund(t, b, amount, max)?.amount;
                    if max.is_some_and(|max| b.available() > max) {
                        panic!("funded past the maximum {max:?}: {b:?}");
                    }
                    return Ok(());
                }
                Event::Drain(amount) => {
                    let before = b.available();
                    let moved = drain(t, b, amount)?;
                    assert!(moved.amount <= before, "drained {} of {before} available", moved.amount);
                    self.funded -= moved.amount;
                    return Ok(());
                }
                Event::Allocate { amount, max } => {
                    let before = b.available();
                    let (out, into) = allocate(b, &mut self.child, Some(amount), max)?;
                    assert!(out.amount == into.amount && out.amount <= before);
                    assert!(max.is_none_or(|m| self.child.available() <= m), "allocated past the child's maximum");
                    self.funded -= out.amount;
                    return Ok(());
                }
                Event::Reclaim(amount) => {
                    let (out, _) = allocate(&mut self.child, b, amount, None)?;
                    self.funded += out.amount;
                    return Ok(());
                }
                Event::TopUp { below, to, per_day, max } => {
                    let rule = TopUpRule { below, to, max_per_day: per_day, max_per_month: None };
                    let before = b.available();
                    let Some(done) = top_up(t, b, &rule, self.topped_up, self.topped_up, max) else {
                        assert!(
                            before >= below
                                || per_day.is_some_and(|d| self.topped_up >= d)
                                || max.is_some_and(|m| before >= m)
                        );
                        return Ok(());
                    };
                    let amount = done.moved.map_or(0, |m| m.amount);
                    assert!(before < below && b.available() <= to, "topped {before} up to {}", b.available());
                    assert_eq!(done.short() > 0, amount < done.wanted);
                    assert!(t.available() == 0 || done.short() == 0, "short with money left: {t:?}");
                    self.funded += amount;
                    self.topped_up += amount;
                    if per_day.is_some_and(|d| self.topped_up > d) || max.is_some_and(|m| b.available() > m) {
                        panic!("a top-up past its allowance: {done:?} {b:?}");
                    }
                    return Ok(());
                }
                Event::Approve { cap, card } => {
                    self.holds.push(Hold::approve(b, cap, card));
                    self.transfers.push(Vec::new());
                    self.approved.push(cap);
                    return Ok(());
                }
                Event::Decline { cap } => {
                    self.holds.push(Hold::declined(cap, cap));
                    self.transfers.push(Vec::new());
                    self.approved.push(0);
                    return Ok(());
                }
                _ if n == 0 => return Ok(()),
                Event::Capture { hold, amount } => self.holds[pick(hold).unwrap()].capture(b, amount)?,
                Event::Reverse { hold, amount } => vec![self.holds[pick(hold).unwrap()].reverse(b, amount)?],
                Event::Expire { hold } => {
                    let h = &mut self.holds[pick(hold).unwrap()];
                    if h.status != HoldStatus::Pending {
                        return Ok(());
                    }
                    vec![h.release_all(b, Release::Expire)]
                }
                Event::Refund { hold, amount } => vec![self.holds[pick(hold).unwrap()].refund(b, amount)?],
                Event::Adjust { hold, total } => vec![self.holds[pick(hold).unwrap()].adjust(b, total)?],
                Event::ApproveAfterAll { hold, cap } => {
                    let i = pick(hold).unwrap();
                    self.holds[i].approve_after_all(b, cap, cap)?;
                    // A second approval: what it released before stays released.
                    self.approved[i] += cap;
                    return Ok(());
                }
            };
            let i = match *event {
                Event::Capture { hold, .. }
                | Event::Reverse { hold, .. }
                | Event::Expire { hold }
                | Event::Refund { hold, .. }
                | Event::Adjust { hold, .. } => pick(hold).unwrap(),
                _ => unreachable!(),
            };
            self.transfers[i].extend(moved);
            Ok(())
        }

        fn check(&self) -> Result<(), String> {
            let b = &self.balance;
            let sum = |f: fn(&Hold) -> i64| self.holds.iter().map(f).sum::<i64>();
            for h in &self.holds {
                if let Some(v) = h.violation() {
                    return Err(v);
                }
            }
            if b.held != sum(|h| h.held) || b.spent != sum(|h| h.posted) || b.refunded != sum(|h| h.refunded) {
                return Err(format!("the balance is not the sum of its holds: {b:?}"));
            }
            if b.funded != self.funded || b.available() != b.funded + b.refunded - b.held - b.spent {
                return Err(format!("funding from nowhere: {b:?} after {} funded", self.funded));
            }
            // No money from nowhere, none lost: the treasury and the agent hold exactly what people
            // deposited less what they withdrew; the treasury never gives what it does not have,
            // and the agent's funding always covers what it spent net of refunds and holds.
            let (t, c) = (&self.treasury, &self.child);
            if t.available() < 0
                || t.available() + b.funded + c.funded != self.deposited
                || t.granted - t.returned != b.funded + c.funded
            {
                return Err(format!("money created or lost: {t:?} {b:?} {c:?} after {} deposited", self.deposited));
            }
            if b.funded < 0 || c.funded < 0 || c.available() < 0 {
                return Err(format!("drained or allocated more than was funded: {b:?} {c:?}"));
            }
            // Each hold is what its transfers say: approved + increases − posts − releases is held,
            // posts + excess is posted, refunds are refunded; no transfer is negative.
            for ((h, moved), approved) in self.holds.iter().zip(&self.transfers).zip(&self.approved) {
                let total = |kinds: &[TransferKind]| {
                    moved.iter().filter(|m| kinds.contains(&m.kind)).map(|m| m.amount).sum::<i64>()
                };
                use TransferKind::*;
                let held = approved + total(&[Increase]) - total(&[Post, Void, Expire]);
                if moved.iter().any(|m| m.amount < 0)
                    || held != h.held
                    || total(&[Post, Excess]) != h.posted
                    || total(&[Refund]) != h.refunded
                {
                    return Err(format!("a hold disagrees with its transfers: {h:?} {moved:?} approved {approved}"));
                }
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn every_history_keeps_every_invariant(events in proptest::collection::vec(event(), 1..60)) {
            let mut ledger = Ledger::default();
            for event in &events {
                let before = (ledger.balance, ledger.holds.clone(), ledger.treasury, ledger.child);
                if ledger.apply(event).is_err() {
                    // A refusal changes nothing.
                    prop_assert_eq!((ledger.balance, ledger.holds.clone(), ledger.treasury, ledger.child), before);
                }
                if let Err(broken) = ledger.check() {
                    return Err(TestCaseError::fail(format!("after {event:?}: {broken}")));
                }
            }
        }
    }

    #[test]
    fn a_capture_beyond_the_hold_is_excess_and_a_smaller_one_releases_the_rest() {
        let mut b = Balance { funded: 10_000, ..Balance::default() };
        let mut hold = Hold::approve(&mut b, 1_000, 900);
        let moved = hold.capture(&mut b, 1_200).unwrap();
        assert_eq!(
            moved.iter().map(|m| (m.kind, m.amount)).collect::<Vec<_>>(),
            [(TransferKind::Post, 1_000), (TransferKind::Excess, 200)]
        );
        assert_eq!((hold.status, hold.held, hold.posted, hold.counted_card), (HoldStatus::Posted, 0, 1_200, 1_080));
        assert_eq!(b.available(), 8_800);

        let mut other = Hold::approve(&mut b, 500, 500);
        let moved = other.capture(&mut b, 300).unwrap();
        assert_eq!(moved[1], Moved { kind: TransferKind::Void, amount: 200, suffix: Some(":release") });
        assert_eq!(b.available(), 8_500);
    }

    #[test]
    fn a_hold_is_released_once_and_a_declined_one_never_moves() {
        let mut b = Balance::default();
        let mut hold = Hold::approve(&mut b, 700, 700);
        assert_eq!(hold.reverse(&mut b, None).unwrap().amount, 700);
        assert_eq!(hold.status, HoldStatus::Voided);
        assert_eq!(hold.reverse(&mut b, None), Err(Refusal::NothingHeld(HoldStatus::Voided)));
        assert_eq!(hold.adjust(&mut b, 100), Err(Refusal::NothingHeld(HoldStatus::Voided)));
        assert_eq!(b.held, 0);

        let mut declined = Hold::declined(700, 700);
        assert_eq!(declined.capture(&mut b, 700), Err(Refusal::Declined));
        assert_eq!(declined.refund(&mut b, 1), Err(Refusal::Declined));
        assert_eq!(b, Balance::default());
    }

    #[test]
    fn refunds_stop_at_what_was_posted() {
        let mut b = Balance::default();
        let mut hold = Hold::approve(&mut b, 1_000, 1_000);
        hold.capture(&mut b, 600).unwrap();
        hold.refund(&mut b, 400).unwrap();
        assert_eq!(hold.refund(&mut b, 201), Err(Refusal::RefundExceedsPosted { posted: 600 }));
        assert_eq!((hold.refunded, b.refunded, hold.counted), (400, 400, 600), "limits are not restored");
    }
}
