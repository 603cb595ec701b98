//! Conversations and their members: creating one (a dm at most once per
//! pair), adding and removing members. Each holds its partition's writer
//! lock until its event is applied, so the next command of the partition
//! validates against the new membership.

use std::sync::Arc;

use confab_schemas::api;
use confab_schemas::events::{ConversationType, HistoryVisibility, LogEvent, MemberRole};
use confab_schemas::ids::{new_id, now_ms};
use dashmap::mapref::entry::Entry;

use crate::commands::{check_chars, Caller, Ingest, NewConversation};
use crate::state::{dm_pair, ConversationHandle};
use crate::{Error, Result};

impl Ingest {
    /// Creates a conversation, or returns the existing dm (with `false`).
    pub async fn create_conversation(&self, caller: &Caller, request: NewConversation) -> Result<(api::Conversation, bool)> {
        let mut member_ids: Vec<String> = Vec::new();
        for member_id in request.member_ids {
            if member_id != caller.user_id && !member_ids.contains(&member_id) {
                member_ids.push(member_id);
            }
        }
        if member_ids.len() > self.limits.members_per_request_max {
            return Err(Error::invalid("memberIds", format!("at most {} users per request", self.limits.members_per_request_max)));
        }
        for member_id in &member_ids {
            if self.state.user(member_id)?.is_none() {
                return Err(Error::invalid("memberIds", format!("user `{member_id}` does not exist")));
            }
        }
        self.check_not_blocked_by(caller, &member_ids)?;
        let title = match request.conversation_type {
            ConversationType::Dm => None,
            _ => request.title,
        };
        if let Some(title) = &title {
            check_chars("title", title, self.limits.title_max_chars)?;
        }
        let conversation_id = new_id("c", now_ms());
        let mut dm_reservation = None;
        if request.conversation_type == ConversationType::Dm {
            if member_ids.len() != 1 {
                return Err(Error::invalid("memberIds", "a dm has exactly one member besides you"));
            }
            let pair = dm_pair(&caller.user_id, &member_ids[0]);
            // The pending entry's lock covers the store check, so two
            // creations of one dm cannot both pass.
            let existing = match self.state.pending_dms.entry(pair.clone()) {
                Entry::Occupied(existing) => Some(existing.get().clone()),
                Entry::Vacant(vacant) => match self.state.stored_dm(&pair)? {
                    Some(existing) => Some(existing),
                    None => {
                        vacant.insert(conversation_id.clone());
                        dm_reservation = Some(pair);
                        None
                    }
                },
            };
            if let Some(existing_id) = existing {
                let handle = self.wait_for_conversation(&existing_id).await?;
                return Ok((conversation_view(&handle), false));
            }
        }
        let event = LogEvent::ConversationCreated {
            conversation_id: conversation_id.clone(),
            conversation_type: request.conversation_type,
            title,
            creator_id: caller.user_id.clone(),
            member_ids,
            ts: now_ms(),
            history_visibility: Some(request.history_visibility.unwrap_or_else(|| HistoryVisibility::default_for(request.conversation_type))),
        };
        let partition = self.partition_of(&conversation_id);
        let outcome = self.commit(partition, vec![event], None).await;
        if let Err(error) = outcome {
            if let Some(pair) = dm_reservation {
                self.state.pending_dms.remove(&pair);
            }
            return Err(error);
        }
        let handle = self.state.conversation(&conversation_id)?.ok_or(Error::StateFailed)?;
        Ok((conversation_view(&handle), true))
    }

    /// Waits until a conversation whose creation is in flight is applied.
    /// Bounded: if that creation failed, nothing will ever come.
    async fn wait_for_conversation(&self, conversation_id: &str) -> Result<Arc<ConversationHandle>> {
        let partition = self.partition_of(conversation_id);
        let mut applied = partition.subscribe_applied();
        let wait = async {
            loop {
                if let Some(handle) = self.state.conversation(conversation_id)? {
                    return Ok(handle);
                }
                if applied.changed().await.is_err() {
                    return Err(Error::Log(confab_log::Error::Poisoned));
                }
            }
        };
        tokio::time::timeout(self.state.config.in_flight_wait_max(), wait).await.unwrap_or(Err(Error::Log(confab_log::Error::Poisoned)))
    }

    pub async fn add_members(&self, caller: &Caller, conversation_id: &str, user_ids: Vec<String>) -> Result<()> {
        if user_ids.len() > self.limits.members_per_request_max {
            return Err(Error::invalid("userIds", format!("at most {} users per request", self.limits.members_per_request_max)));
        }
        self.check_not_blocked_by(caller, &user_ids)?;
        for user_id in &user_ids {
            if self.state.user(user_id)?.is_none() {
                return Err(Error::invalid("userIds", format!("user `{user_id}` does not exist")));
            }
        }
        let partition = self.partition_of(conversation_id);
        let _writer = partition.writer.lock().await;
        let pin = self.pinned_conversation(conversation_id)?;
        let new_members: Vec<String> = {
            let conversation = pin.0.state.read();
            let role = conversation.member(&caller.user_id).and_then(|member| member.role);
            match (conversation.conversation_type, role) {
                (_, None) => return Err(Error::NotMember(conversation_id.to_string())),
                (ConversationType::Dm, _) => {
                    return Err(Error::NotAllowed {
                        action: "changing members",
                        conversation_id: conversation_id.into(),
                        allowed: "groups and channels, never dms",
                    })
                }
                (ConversationType::Channel, Some(MemberRole::Member)) => {
                    return Err(Error::NotAllowed { action: "adding members", conversation_id: conversation_id.into(), allowed: "channel admins" })
                }
                _ => {}
            }
            let mut fresh: Vec<String> = Vec::new();
            for user_id in user_ids {
                if !conversation.is_member(&user_id) && !fresh.contains(&user_id) {
                    fresh.push(user_id);
                }
            }
            let count = conversation.member_count + fresh.len();
            if count > self.limits.members_per_conversation_max {
                return Err(Error::TooManyMembers { conversation_id: conversation_id.into(), count, max: self.limits.members_per_conversation_max });
            }
            fresh
        };
        if new_members.is_empty() {
            return Ok(());
        }
        let event = LogEvent::MembersAdded { conversation_id: conversation_id.to_string(), user_ids: new_members, by: caller.user_id.clone(), ts: now_ms() };
        self.commit_locked(partition, vec![event], Some(pin)).await
    }

    /// Removes a member: yourself (leaving), or anyone if you are an admin.
    pub async fn remove_member(&self, caller: &Caller, conversation_id: &str, user_id: &str) -> Result<()> {
        let partition = self.partition_of(conversation_id);
        let _writer = partition.writer.lock().await;
        let pin = self.pinned_conversation(conversation_id)?;
        {
            let conversation = pin.0.state.read();
            let Some(caller_member) = conversation.member(&caller.user_id) else {
                return Err(Error::NotMember(conversation_id.to_string()));
            };
            if conversation.conversation_type == ConversationType::Dm {
                return Err(Error::NotAllowed {
                    action: "changing members",
                    conversation_id: conversation_id.into(),
                    allowed: "groups and channels, never dms",
                });
            }
            if user_id != caller.user_id && caller_member.role != Some(MemberRole::Admin) {
                return Err(Error::NotAllowed { action: "removing other members", conversation_id: conversation_id.into(), allowed: "conversation admins" });
            }
            if !conversation.is_member(user_id) {
                return Err(Error::MemberNotFound { conversation_id: conversation_id.into(), user_id: user_id.into() });
            }
        }
        let event =
            LogEvent::MemberRemoved { conversation_id: conversation_id.to_string(), user_id: user_id.to_string(), by: caller.user_id.clone(), ts: now_ms() };
        self.commit_locked(partition, vec![event], Some(pin)).await
    }
}

pub(crate) fn conversation_view(handle: &ConversationHandle) -> api::Conversation {
    let conversation = handle.state.read();
    let mut member_ids: Vec<String> = conversation.current_members().map(|(user_id, _)| user_id.clone()).collect();
    member_ids.sort();
    api::Conversation {
        conversation_id: conversation.conversation_id.clone(),
        conversation_type: conversation.conversation_type,
        title: conversation.title.clone(),
        member_ids,
        created_at: conversation.created_at,
        history_visibility: conversation.history_visibility,
    }
}
