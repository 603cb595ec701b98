//! Mentions: who a message names, worked out from its body when it is sent
//! or edited, so that every reader (the `201`, history, sync, live events,
//! the push pipeline, compliance SQL) sees the same `mentions`.
//!
//! `@name` counts where the `@` starts the body or follows a character that
//! cannot be in a username (so `a@b.com` names nobody). The name is the
//! longest run of username characters after it; when that is not a member,
//! punctuation at its end is dropped one character at a time (`@bob.` and
//! `@bob,` both name `bob`, and a member called `bo.b` is still found).
//! `@channel` and `@all` mention every member, `@here` those online; none
//! of the three lists anyone in `userIds`. A name that is not a member of
//! the conversation is plain text.

use confab_schemas::events::Mentions;

/// Bodies are short, but a body of nothing but `@a @b @c …` must not cost a
/// lookup per word without end.
const MAX_NAMES: usize = 64;

fn username_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// The `@` words of a body, lowercased, without duplicates, in order.
pub(crate) fn candidates(body: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut previous: Option<char> = None;
    for (at, c) in body.char_indices() {
        let starts = c == '@' && !previous.is_some_and(username_char) && previous != Some('@');
        previous = Some(c);
        if !starts {
            continue;
        }
        let rest = &body[at + 1..];
        let end = rest.find(|c: char| !username_char(c)).unwrap_or(rest.len());
        if end == 0 {
            continue;
        }
        let name = rest[..end].to_ascii_lowercase();
        if !names.contains(&name) {
            names.push(name);
            if names.len() == MAX_NAMES {
                break;
            }
        }
    }
    names
}

/// Works out the mentions of `body`; `member_named` gives the member with
/// a username, if there is one.
pub(crate) fn resolve(body: &str, mut member_named: impl FnMut(&str) -> Option<String>) -> Mentions {
    let mut mentions = Mentions::default();
    for candidate in candidates(body) {
        let mut name = candidate.as_str();
        loop {
            match name {
                "channel" | "all" => {
                    mentions.channel = true;
                    break;
                }
                "here" => {
                    mentions.here = true;
                    break;
                }
                _ => {}
            }
            if name.len() >= 3 {
                if let Some(user_id) = member_named(name) {
                    if !mentions.user_ids.contains(&user_id) {
                        mentions.user_ids.push(user_id);
                    }
                    break;
                }
            }
            match name.strip_suffix(['.', '-', '_']) {
                Some(shorter) if !shorter.is_empty() => name = shorter,
                _ => break,
            }
        }
    }
    mentions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(name: &str) -> Option<String> {
        match name {
            "bob" => Some("u_bob".into()),
            "bo.b" => Some("u_bo.b".into()),
            "carol_" => Some("u_carol_".into()),
            _ => None,
        }
    }

    #[test]
    fn names_members_and_leaves_the_rest_as_text() {
        let mentions = resolve("hi @bob, and @Bob again; mail a@bob.com; @nobody", members);
        assert_eq!(mentions.user_ids, vec!["u_bob".to_string()]);
        assert!(!mentions.channel && !mentions.here);
        assert_eq!(resolve("@bob. @bo.b! @carol_.", members).user_ids, vec!["u_bob".to_string(), "u_bo.b".into(), "u_carol_".into()]);
        assert_eq!(resolve("(@bob)", members).user_ids, vec!["u_bob".to_string()]);
        assert!(resolve("bob@ @@bob @", members).user_ids.is_empty());
    }

    #[test]
    fn channel_all_and_here_list_nobody() {
        let mentions = resolve("@channel: lunch? @here!", members);
        assert!(mentions.channel && mentions.here && mentions.user_ids.is_empty());
        assert!(resolve("@all", members).channel);
        assert!(!resolve("@allison", members).channel);
        assert!(resolve("plain text", members).is_empty());
    }

    #[test]
    fn a_body_of_names_costs_a_bounded_number_of_lookups() {
        let body: String = (0..10_000).map(|i| format!("@user{i} ")).collect();
        let mut lookups = 0;
        resolve(&body, |_| {
            lookups += 1;
            None
        });
        assert!(lookups <= MAX_NAMES * 8, "{lookups} lookups");
    }
}
