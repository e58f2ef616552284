//! Who is in a group call, agreed by its members without a server (sans-IO).
//!
//! A group call is a full mesh of pairwise call connections; its roster is each member's own
//! [`GroupRoster`], fed with what the other members say on their pairwise call streams (the
//! connection authenticates `from`: it is never a claim) and with whether it hears them:
//!
//! - **Nobody is added but by a member's own action.** `Added { peer }` counts only from the
//!   member that invited `peer` (the sender is the inviter). Each member tells every member
//!   about its own invitations, and tells a newcomer, once it hears from it, about all of its
//!   own invitations so far: so every member learns of every invitation from its author,
//!   whatever crossed on the way.
//! - **A late joiner learns the roster from its inviter** (`Welcome { members }`), the one
//!   member it trusts at that point; the others accept its connection
//!   ([`GroupRoster::accepts`]) once their own roster has it, from its inviter's `Added`.
//! - **Leaving and vanishing.** A member that says `Leave`, or that has not been heard for
//!   [`VANISH`], is removed; every member watches its own link, so a member that vanished is
//!   gone for everyone within 5 s. An invitee that has not joined within [`INVITE_TIMEOUT`]
//!   is removed (it did not answer).
//! - **At most [`MAX_MEMBERS`].** A member does not invite past the limit; simultaneous
//!   invitations by different members that cross it are resolved the same way by everyone
//!   once they all know them: the invitees not yet joined with the greatest keys are dropped.
//!
//! What a member says against these rules (an `Added` for someone it did not invite, a
//! `Welcome` after the join, anything from a non-member) changes nothing and is reported
//! ([`RosterEvent::Ignored`]).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::PeerId;

/// Most members of a group call (every member sends its media to every other one).
pub const MAX_MEMBERS: usize = 6;
/// A member not heard for this long is removed (its link carries media or keep-alives every
/// second while it is there).
pub const VANISH: Duration = Duration::from_secs(4);
/// An invitee that has not joined within this long is removed.
pub const INVITE_TIMEOUT: Duration = Duration::from_secs(45);

/// What members tell each other about the roster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RosterMsg {
    /// To an invitee, from its inviter: the members (and who invited each).
    Welcome {
        /// Every member, with its inviter.
        members: Vec<(PeerId, PeerId)>,
    },
    /// The sender invited `peer`.
    Added {
        /// The invitee.
        peer: PeerId,
    },
    /// The sender leaves the call.
    Leave,
    /// The sender's invitation of `peer` is over before it joined (declined, unreachable).
    Withdrawn {
        /// The invitee.
        peer: PeerId,
    },
}

/// Why a member was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// It said so.
    Left,
    /// It was not heard for [`VANISH`].
    Vanished,
    /// It was invited and did not join within [`INVITE_TIMEOUT`].
    NotAnswered,
    /// Invitations crossed past [`MAX_MEMBERS`] and it was not yet in.
    OverCapacity,
    /// Its inviter withdrew the invitation (declined, unreachable), or left before it joined.
    Withdrawn,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RosterEvent {
    /// A member was invited (by `inviter`); it is not in the call until it joins.
    Invited {
        /// The invitee.
        peer: PeerId,
        /// Who invited it.
        inviter: PeerId,
    },
    /// An invitee joined (it was heard on its own link).
    Joined(PeerId),
    /// A member is no longer in the call.
    Removed {
        /// The member.
        peer: PeerId,
        /// Why.
        why: Removal,
    },
    /// A member said something the rules do not allow; nothing changed.
    Ignored {
        /// Who said it.
        from: PeerId,
        /// What was wrong.
        why: &'static str,
    },
}

/// Why an invitation is not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    /// The call has [`MAX_MEMBERS`] members (invitees included).
    #[error("the call is full ({MAX_MEMBERS} members)")]
    Full,
    /// The peer is a member already (or invited).
    #[error("already in the call")]
    AlreadyIn,
    /// This member left the call.
    #[error("you left the call")]
    Left,
}

/// One member as this member sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Who invited it (the creator: itself).
    pub inviter: PeerId,
    /// Heard on its own link at least once.
    pub joined: bool,
    since: Instant,
    heard: Instant,
}

/// The roster of one group call, as one member keeps it.
#[derive(Debug)]
pub struct GroupRoster {
    me: PeerId,
    members: BTreeMap<PeerId, Member>,
    left: bool,
    sends: VecDeque<(PeerId, RosterMsg)>,
    events: VecDeque<RosterEvent>,
}

impl GroupRoster {
    /// A new call with `me` alone in it (invitations follow).
    pub fn create(now: Instant, me: PeerId) -> Self {
        let mut r = Self {
            me,
            members: BTreeMap::new(),
            left: false,
            sends: VecDeque::new(),
            events: VecDeque::new(),
        };
        r.members.insert(me, Self::member(now, me, true));
        r
    }

    /// Joining a call `inviter` invited `me` to, with the members its `Welcome` listed.
    pub fn welcomed(
        now: Instant,
        me: PeerId,
        inviter: PeerId,
        members: &[(PeerId, PeerId)],
    ) -> Self {
        let mut r = Self::create(now, me);
        if let Some(m) = r.members.get_mut(&me) {
            m.inviter = inviter;
        }
        r.members.insert(inviter, Self::member(now, inviter, true));
        for (peer, by) in members.iter().take(MAX_MEMBERS * 2) {
            if *peer != me && *peer != inviter {
                r.members.insert(*peer, Self::member(now, *by, false));
            }
        }
        r.trim();
        r
    }

    fn member(now: Instant, inviter: PeerId, joined: bool) -> Member {
        Member {
            inviter,
            joined,
            since: now,
            heard: now,
        }
    }

    /// Invites `peer`: the other members are told (`Added`), the invitee gets the roster
    /// (`Welcome`, to send with the call's offer).
    pub fn invite(&mut self, now: Instant, peer: PeerId) -> Result<(), InviteError> {
        if self.left {
            return Err(InviteError::Left);
        }
        if self.members.contains_key(&peer) {
            return Err(InviteError::AlreadyIn);
        }
        if self.members.len() >= MAX_MEMBERS {
            return Err(InviteError::Full);
        }
        for other in self.others() {
            self.sends.push_back((other, RosterMsg::Added { peer }));
        }
        self.members.insert(peer, Self::member(now, self.me, false));
        let members = (self.members.iter())
            .map(|(id, m)| (*id, m.inviter))
            .collect();
        self.sends.push_back((peer, RosterMsg::Welcome { members }));
        self.events.push_back(RosterEvent::Invited {
            peer,
            inviter: self.me,
        });
        Ok(())
    }

    /// Leaves the call: every other member is told.
    pub fn leave(&mut self) {
        if !self.left {
            self.left = true;
            for other in self.others() {
                self.sends.push_back((other, RosterMsg::Leave));
            }
        }
    }

    /// What member `from` said on its link.
    pub fn handle(&mut self, now: Instant, from: PeerId, msg: RosterMsg) {
        if from == self.me || !self.members.contains_key(&from) {
            self.ignore(from, "not a member");
            return;
        }
        self.heard(now, from);
        match msg {
            RosterMsg::Welcome { .. } => self.ignore(from, "a roster after the join"),
            RosterMsg::Leave => self.remove(from, Removal::Left),
            RosterMsg::Added { peer } => match self.members.get(&peer) {
                Some(m) if m.inviter == from => {}
                Some(_) => self.ignore(from, "an invitation of someone else's invitee"),
                None => {
                    self.members.insert(peer, Self::member(now, from, false));
                    self.events.push_back(RosterEvent::Invited {
                        peer,
                        inviter: from,
                    });
                    self.trim();
                }
            },
            RosterMsg::Withdrawn { peer } => match self.members.get(&peer) {
                Some(m) if m.inviter == from && !m.joined => self.remove(peer, Removal::Withdrawn),
                Some(m) if m.inviter == from => self.ignore(from, "a withdrawal after the join"),
                Some(_) => self.ignore(from, "a withdrawal of someone else's invitee"),
                None => {}
            },
        }
    }

    /// This member's invitation of `peer` is over before it joined (it declined, or could
    /// not be reached): the other members are told. Nothing happens for anyone else.
    pub fn withdraw(&mut self, peer: PeerId) {
        let mine = (self.members.get(&peer)).is_some_and(|m| m.inviter == self.me && !m.joined);
        if mine && peer != self.me {
            self.remove(peer, Removal::Withdrawn);
            for other in self.others() {
                self.sends.push_back((other, RosterMsg::Withdrawn { peer }));
            }
        }
    }

    /// Whether this member invited `peer` (and it is still in the roster).
    pub fn invited_by_me(&self, peer: &PeerId) -> bool {
        *peer != self.me && self.members.get(peer).is_some_and(|m| m.inviter == self.me)
    }

    /// Who invited this member.
    pub fn my_inviter(&self) -> PeerId {
        self.members.get(&self.me).map_or(self.me, |m| m.inviter)
    }

    /// `from` was heard on its link (media, a keep-alive, any frame).
    pub fn heard(&mut self, now: Instant, from: PeerId) {
        let Some(m) = self.members.get_mut(&from) else {
            return;
        };
        m.heard = now;
        if !m.joined && from != self.me {
            m.joined = true;
            self.events.push_back(RosterEvent::Joined(from));
            // A newcomer learns of this member's own invitations from their author.
            let mine: Vec<PeerId> = (self.members.iter())
                .filter(|(id, m)| m.inviter == self.me && **id != self.me && **id != from)
                .map(|(id, _)| *id)
                .collect();
            for peer in mine {
                self.sends.push_back((from, RosterMsg::Added { peer }));
            }
        }
    }

    /// When [`GroupRoster::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.members.iter())
            .filter(|(id, _)| **id != self.me)
            .map(|(_, m)| Self::deadline(m))
            .min()
    }

    fn deadline(m: &Member) -> Instant {
        if m.joined {
            m.heard + VANISH
        } else {
            m.since + INVITE_TIMEOUT
        }
    }

    /// Time passed: members not heard are removed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<(PeerId, bool)> = (self.members.iter())
            .filter(|(id, m)| **id != self.me && now >= Self::deadline(m))
            .map(|(id, m)| (*id, m.joined))
            .collect();
        for (peer, joined) in due {
            let why = if joined {
                Removal::Vanished
            } else {
                Removal::NotAnswered
            };
            self.remove(peer, why);
        }
    }

    /// Whether a pairwise call from `peer` belongs to this group call (it was invited by a
    /// member's own action, and is still in).
    pub fn accepts(&self, peer: &PeerId) -> bool {
        !self.left && *peer != self.me && self.members.contains_key(peer)
    }

    /// The members, this one included, by key.
    pub fn members(&self) -> impl Iterator<Item = (&PeerId, &Member)> {
        self.members.iter()
    }

    /// Whether the call goes on for this member (it has not left, and someone else is in).
    pub fn is_live(&self) -> bool {
        !self.left && self.members.len() > 1
    }

    /// A message to send on the link to a member.
    pub fn poll_send(&mut self) -> Option<(PeerId, RosterMsg)> {
        self.sends.pop_front()
    }

    /// The next change.
    pub fn poll_event(&mut self) -> Option<RosterEvent> {
        self.events.pop_front()
    }

    fn others(&self) -> Vec<PeerId> {
        (self.members.keys())
            .filter(|id| **id != self.me)
            .copied()
            .collect()
    }

    /// Removes `peer`, and the invitees it invited that have not joined: nobody is left to
    /// bring them in (every member sees the inviter go, so every member drops them).
    fn remove(&mut self, peer: PeerId, why: Removal) {
        if self.members.remove(&peer).is_none() {
            return;
        }
        self.events.push_back(RosterEvent::Removed { peer, why });
        let orphans: Vec<PeerId> = (self.members.iter())
            .filter(|(id, m)| m.inviter == peer && !m.joined && **id != self.me)
            .map(|(id, _)| *id)
            .collect();
        for o in orphans {
            self.members.remove(&o);
            self.events.push_back(RosterEvent::Removed {
                peer: o,
                why: Removal::Withdrawn,
            });
        }
    }

    fn ignore(&mut self, from: PeerId, why: &'static str) {
        self.events.push_back(RosterEvent::Ignored { from, why });
    }

    /// Past [`MAX_MEMBERS`] (invitations crossed): the invitees not yet joined with the
    /// greatest keys go, the same ones for every member that knows the same invitations.
    fn trim(&mut self) {
        while self.members.len() > MAX_MEMBERS {
            let drop = (self.members.iter())
                .rev()
                .find(|(id, m)| !m.joined && **id != self.me)
                .map(|(id, _)| *id);
            let Some(peer) = drop else { break };
            self.remove(peer, Removal::OverCapacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn events(r: &mut GroupRoster) -> Vec<RosterEvent> {
        std::iter::from_fn(|| r.poll_event()).collect()
    }

    fn sends(r: &mut GroupRoster) -> Vec<(PeerId, RosterMsg)> {
        std::iter::from_fn(|| r.poll_send()).collect()
    }

    fn keys(r: &GroupRoster) -> Vec<PeerId> {
        r.members().map(|(k, _)| *k).collect()
    }

    /// Everyone's roster, delivering every message (in order) until nothing is left to say;
    /// every member hears every other one it has in its roster.
    struct Mesh {
        now: Instant,
        rosters: BTreeMap<PeerId, GroupRoster>,
    }

    impl Mesh {
        /// Alice (key 1) starts a call and invites `invitees`; everything said is delivered.
        fn call(t0: Instant, invitees: impl IntoIterator<Item = u8>) -> Self {
            let mut alice = GroupRoster::create(t0, id(1));
            for n in invitees {
                alice.invite(t0, id(n)).unwrap();
            }
            let mut mesh = Mesh {
                now: t0,
                rosters: BTreeMap::from([(id(1), alice)]),
            };
            mesh.run();
            mesh
        }

        fn run(&mut self) {
            loop {
                let mut out = Vec::new();
                for (from, r) in &mut self.rosters {
                    for (to, msg) in std::iter::from_fn(|| r.poll_send()) {
                        out.push((*from, to, msg));
                    }
                }
                if out.is_empty() {
                    break;
                }
                for (from, to, msg) in out {
                    let now = self.now;
                    match (msg, self.rosters.get_mut(&to)) {
                        (RosterMsg::Welcome { members }, None) => {
                            let r = GroupRoster::welcomed(now, to, from, &members);
                            self.rosters.insert(to, r);
                        }
                        (msg, Some(r)) => r.handle(now, from, msg),
                        (_, None) => {}
                    }
                }
                // Links: whoever has a member in its roster hears it (and is heard).
                let ids: Vec<PeerId> = self.rosters.keys().copied().collect();
                for a in &ids {
                    for b in &ids {
                        let knows = self.rosters[b].accepts(a) && self.rosters[a].accepts(b);
                        if a != b && knows {
                            let now = self.now;
                            if let Some(r) = self.rosters.get_mut(b) {
                                r.heard(now, *a);
                            }
                        }
                    }
                }
            }
        }

        fn rosters_agree(&self) -> Vec<PeerId> {
            let mut views = self.rosters.values().map(keys);
            let first = views.next().unwrap_or_default();
            for v in views {
                assert_eq!(v, first, "every member sees the same roster");
            }
            first
        }
    }

    #[test]
    fn invitees_join_and_a_late_joiner_learns_the_roster_from_its_inviter() {
        let t0 = Instant::now();
        let mut mesh = Mesh::call(t0, 2..=3);
        assert_eq!(mesh.rosters_agree(), vec![id(1), id(2), id(3)]);
        assert!(
            mesh.rosters
                .values()
                .all(|r| r.members().all(|(_, m)| m.joined))
        );

        // Bob invites dave late: everyone has him from bob's own Added, dave from bob's Welcome.
        mesh.rosters
            .get_mut(&id(2))
            .unwrap()
            .invite(t0, id(4))
            .unwrap();
        mesh.run();
        assert_eq!(mesh.rosters_agree(), vec![id(1), id(2), id(3), id(4)]);
        let carol = mesh.rosters.get_mut(&id(3)).unwrap();
        assert!(carol.accepts(&id(4)));
        assert!(events(carol).contains(&RosterEvent::Invited {
            peer: id(4),
            inviter: id(2)
        }));
    }

    #[test]
    fn a_member_that_leaves_or_vanishes_is_removed_and_the_call_goes_on_while_two_remain() {
        let t0 = Instant::now();
        let mut mesh = Mesh::call(t0, 2..=4);
        let mut carol = mesh.rosters.remove(&id(3)).unwrap();
        carol.leave();
        for (to, msg) in sends(&mut carol) {
            assert_eq!(msg, RosterMsg::Leave);
            mesh.rosters.get_mut(&to).unwrap().handle(t0, id(3), msg);
        }
        assert_eq!(mesh.rosters_agree(), vec![id(1), id(2), id(4)]);
        assert_eq!(carol.invite(t0, id(9)), Err(InviteError::Left));

        // Dave vanishes: the others stop hearing him; each removes him within 5 s.
        mesh.rosters.remove(&id(4));
        for (me, r) in &mut mesh.rosters {
            let other = if *me == id(1) { id(2) } else { id(1) };
            let mut t = t0;
            while t < t0 + Duration::from_secs(5) {
                t += Duration::from_millis(500);
                r.heard(t, other);
                r.handle_timeout(t);
            }
            assert!(events(r).contains(&RosterEvent::Removed {
                peer: id(4),
                why: Removal::Vanished
            }));
            assert!(r.is_live(), "two remain");
        }
        assert_eq!(mesh.rosters_agree(), vec![id(1), id(2)]);
    }

    #[test]
    fn an_inviter_that_leaves_takes_its_pending_invitation_along() {
        let t0 = Instant::now();
        let mut mesh = Mesh::call(t0, [2]);
        // Bob invites carol, who does not answer, then leaves: alice is alone and the call
        // ends for her at once (not after carol's 45 s).
        let bob = mesh.rosters.get_mut(&id(2)).unwrap();
        bob.invite(t0, id(3)).unwrap();
        let said = sends(bob);
        let alice = mesh.rosters.get_mut(&id(1)).unwrap();
        for (to, msg) in said {
            if to == id(1) {
                alice.handle(t0, id(2), msg);
            }
        }
        assert!(alice.members().any(|(k, _)| *k == id(3)));
        alice.handle(t0, id(2), RosterMsg::Leave);
        let ev = events(alice);
        assert!(ev.contains(&RosterEvent::Removed {
            peer: id(3),
            why: Removal::Withdrawn
        }));
        assert_eq!(keys(alice), vec![id(1)]);
        assert!(!alice.is_live());
    }

    #[test]
    fn crossed_invitations_reach_everyone_and_past_the_limit_the_same_ones_go() {
        let t0 = Instant::now();
        let mut mesh = Mesh::call(t0, 2..=4);
        // Alice, bob and carol each invite someone at once: 4 + 3 = 7 > 6.
        for (by, peer) in [(1, 20), (2, 30), (3, 10)] {
            mesh.rosters
                .get_mut(&id(by))
                .unwrap()
                .invite(t0, id(peer))
                .unwrap();
        }
        mesh.run();
        // The one left out: nobody accepts its calls (its own roster, from bob's welcome,
        // empties as the others never answer it).
        mesh.rosters.remove(&id(30));
        assert!(mesh.rosters.values().all(|r| !r.accepts(&id(30))));
        let agreed = mesh.rosters_agree();
        assert_eq!(agreed.len(), MAX_MEMBERS);
        assert!(
            !agreed.contains(&id(30)),
            "the greatest key not yet in goes"
        );
        assert!(agreed.contains(&id(10)) && agreed.contains(&id(20)));
        // Inviting past the limit is refused at once.
        let alice = mesh.rosters.get_mut(&id(1)).unwrap();
        assert_eq!(alice.invite(t0, id(40)), Err(InviteError::Full));
        assert_eq!(alice.invite(t0, id(2)), Err(InviteError::AlreadyIn));
    }

    #[test]
    fn a_declined_invitation_is_withdrawn_for_everyone_by_its_inviter_only() {
        let t0 = Instant::now();
        let mut mesh = Mesh::call(t0, 2..=3);
        let deliver = |mesh: &mut Mesh, from: u8, msgs: Vec<(PeerId, RosterMsg)>| {
            for (to, msg) in msgs {
                if let Some(r) = mesh.rosters.get_mut(&to) {
                    r.handle(t0, id(from), msg);
                }
            }
        };
        // Alice invites eve (key 5); eve's Welcome never arrives (she declines).
        let alice = mesh.rosters.get_mut(&id(1)).unwrap();
        alice.invite(t0, id(5)).unwrap();
        let out = sends(alice);
        deliver(&mut mesh, 1, out);
        assert!(mesh.rosters.values().all(|r| r.accepts(&id(5))));
        // Bob cannot withdraw alice's invitation, and nobody can withdraw a member.
        deliver(
            &mut mesh,
            2,
            vec![(id(3), RosterMsg::Withdrawn { peer: id(5) })],
        );
        deliver(
            &mut mesh,
            2,
            vec![(id(3), RosterMsg::Withdrawn { peer: id(1) })],
        );
        let carol = mesh.rosters.get_mut(&id(3)).unwrap();
        assert!(carol.accepts(&id(5)) && carol.accepts(&id(1)));
        assert_eq!(
            events(carol)
                .iter()
                .filter(|e| matches!(e, RosterEvent::Ignored { .. }))
                .count(),
            2
        );
        // Alice withdraws it: gone everywhere at once (not after the invitation timeout).
        let alice = mesh.rosters.get_mut(&id(1)).unwrap();
        alice.withdraw(id(2));
        assert!(sends(alice).is_empty(), "a joined member is not withdrawn");
        alice.withdraw(id(5));
        let out = sends(alice);
        deliver(&mut mesh, 1, out);
        assert_eq!(mesh.rosters_agree(), vec![id(1), id(2), id(3)]);
        assert!(
            events(mesh.rosters.get_mut(&id(2)).unwrap()).contains(&RosterEvent::Removed {
                peer: id(5),
                why: Removal::Withdrawn
            })
        );
    }

    #[test]
    fn a_member_that_lies_about_the_roster_changes_nothing() {
        let t0 = Instant::now();
        let mut mesh = Mesh::call(t0, 2..=3);
        let alice = mesh.rosters.get_mut(&id(1)).unwrap();
        events(alice);
        // Mallory (id 3) claims alice's invitee as hers, sends a roster after joining, and a
        // stranger says it invited someone: none of it counts.
        alice.handle(t0, id(3), RosterMsg::Added { peer: id(2) });
        alice.handle(
            t0,
            id(3),
            RosterMsg::Welcome {
                members: vec![(id(66), id(3))],
            },
        );
        alice.handle(t0, id(77), RosterMsg::Added { peer: id(78) });
        alice.handle(t0, id(77), RosterMsg::Leave);
        assert_eq!(keys(alice), vec![id(1), id(2), id(3)]);
        let ignored = events(alice)
            .into_iter()
            .filter(|e| matches!(e, RosterEvent::Ignored { .. }))
            .count();
        assert_eq!(ignored, 4);
        assert!(!alice.accepts(&id(66)) && !alice.accepts(&id(78)));

        // She may invite someone herself (her own action): then it counts, as hers; a fake
        // invitee that never joins is gone after the invitation timeout.
        alice.handle(t0, id(3), RosterMsg::Added { peer: id(66) });
        assert!(alice.accepts(&id(66)));
        assert_eq!(
            alice
                .members()
                .find(|(k, _)| **k == id(66))
                .map(|(_, m)| m.inviter),
            Some(id(3))
        );
        let later = t0 + INVITE_TIMEOUT;
        alice.heard(later, id(2));
        alice.heard(later, id(3));
        alice.handle_timeout(later);
        assert!(events(alice).contains(&RosterEvent::Removed {
            peer: id(66),
            why: Removal::NotAnswered
        }));
    }
}
