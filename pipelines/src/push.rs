//! Who is pushed for a message: the push stage's rule, in one place.
//!
//! A member is pushed unless they blocked the sender, muted the
//! conversation (for good or until later), or set `notify` to `none`.
//! With `notify = mentions`, or in a conversation above the stage's
//! `large_conversation_members`, only a message that mentions them pushes:
//! by name, `@channel`/`@all`, or `@here` while they are online somewhere.
//! Of their devices, only those without a live socket are pushed (a live
//! one gets the event itself); the sender is never pushed.

use confab_schemas::events::{Mentions, Notify};

/// What the rule reads about one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    pub user_id: &'a str,
    pub muted: bool,
    pub notify: Notify,
    pub blocked_sender: bool,
    /// Connected on some device now.
    pub online: bool,
}

/// Whether `member` gets a push for a message with `mentions`.
pub fn wants_push(member: Member<'_>, mentions: &Mentions, large: bool) -> bool {
    if member.blocked_sender || member.muted || member.notify == Notify::None {
        return false;
    }
    let mentioned = mentions.names(member.user_id) || (mentions.here && member.online);
    match (member.notify, large) {
        (Notify::Mentions, _) | (_, true) => mentioned,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(notify: Notify) -> Member<'static> {
        Member { user_id: "u_bob", muted: false, notify, blocked_sender: false, online: false }
    }

    #[test]
    fn settings_blocks_mentions_and_size_decide() {
        let none = Mentions::default();
        let named = Mentions { user_ids: vec!["u_bob".into()], ..Mentions::default() };
        let channel = Mentions { channel: true, ..Mentions::default() };
        let here = Mentions { here: true, ..Mentions::default() };
        assert!(wants_push(member(Notify::All), &none, false));
        assert!(!wants_push(member(Notify::All), &none, true), "large conversations push only mentions");
        assert!(wants_push(member(Notify::All), &named, true));
        assert!(!wants_push(member(Notify::Mentions), &none, false));
        assert!(wants_push(member(Notify::Mentions), &named, false));
        assert!(wants_push(member(Notify::Mentions), &channel, false));
        assert!(!wants_push(member(Notify::Mentions), &here, false), "@here reaches only those online");
        assert!(wants_push(Member { online: true, ..member(Notify::Mentions) }, &here, false));
        assert!(!wants_push(member(Notify::None), &named, false));
        assert!(!wants_push(Member { muted: true, ..member(Notify::All) }, &named, false));
        assert!(!wants_push(Member { blocked_sender: true, ..member(Notify::All) }, &none, false));
    }
}
