//! Accounts and devices: sign-up, a device per session, and the lookups
//! authentication makes on every request (served from the cache).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use confab_schemas::events::{AccountRole, LogEvent};
use confab_schemas::ids::{new_id, now_ms};
use dashmap::mapref::entry::Entry;

use crate::commands::{check_chars, Caller, Ingest};
use crate::state::{Device, User};
use crate::{Error, Result};

impl Ingest {
    /// Creates an account; the first account on a fresh server is an administrator.
    pub async fn create_user(&self, username: &str, display_name: Option<String>, password_hash: String) -> Result<Arc<User>> {
        if let Some(name) = &display_name {
            check_chars("displayName", name, self.limits.display_name_max_chars)?;
        }
        // Reserve the name (in flight) and check the store under that
        // reservation, so two sign-ups with one name cannot both pass.
        match self.state.pending_usernames.entry(username.to_string()) {
            Entry::Occupied(_) => return Err(Error::UsernameTaken(username.to_string())),
            Entry::Vacant(vacant) => {
                if self.state.user_id_by_name(username)?.is_some() {
                    return Err(Error::UsernameTaken(username.to_string()));
                }
                vacant.insert(());
            }
        }
        let first = !self.state.admin_assigned.swap(true, Ordering::AcqRel);
        let user_id = new_id("u", now_ms());
        let roles = if first { vec![AccountRole::Admin] } else { Vec::new() };
        let event = LogEvent::UserCreated { user_id: user_id.clone(), username: username.to_string(), display_name, password_hash, roles, ts: now_ms() };
        let partition = self.partition_of(&user_id);
        let outcome = self.commit(partition, vec![event], None).await;
        if let Err(error) = outcome {
            self.state.pending_usernames.remove(username);
            if first {
                self.state.admin_assigned.store(false, Ordering::Release);
            }
            return Err(error);
        }
        self.state.user(&user_id)?.ok_or(Error::StateFailed)
    }

    /// Records a new session: each session is a device of its own.
    pub async fn create_device(&self, user_id: &str, device_name: Option<String>, platform: Option<String>) -> Result<String> {
        if let Some(name) = &device_name {
            check_chars("deviceName", name, self.limits.device_name_max_chars)?;
        }
        if let Some(name) = &platform {
            check_chars("platform", name, self.limits.device_name_max_chars)?;
        }
        let device_id = new_id("d", now_ms());
        let event = LogEvent::SessionCreated { user_id: user_id.to_string(), device_id: device_id.clone(), device_name, platform, ts: now_ms() };
        self.commit(self.partition_of(user_id), vec![event], None).await?;
        Ok(device_id)
    }

    /// Logs a device of `user_id` out (`by_device` is the one asking): once
    /// this returns, its tokens answer 401. Only the user's own devices;
    /// another's, or one already gone, is `DeviceNotFound`.
    pub async fn end_session(&self, user_id: &str, device_id: &str, by_device: &str) -> Result<()> {
        let owned = self.state.device(device_id)?.is_some_and(|device| device.user_id == user_id);
        if !owned {
            return Err(Error::DeviceNotFound(device_id.to_string()));
        }
        let event = LogEvent::SessionEnded { user_id: user_id.to_string(), device_id: device_id.to_string(), by_device: by_device.to_string(), ts: now_ms() };
        self.commit(self.partition_of(user_id), vec![event], None).await
    }

    /// Blocks (or unblocks) `user_id` for the caller.
    pub async fn set_block(&self, caller: &Caller, user_id: &str, blocked: bool) -> Result<()> {
        if user_id == caller.user_id {
            return Err(Error::invalid("userId", "you cannot block yourself".to_string()));
        }
        if self.state.user(user_id)?.is_none() {
            return Err(Error::UserNotFound(user_id.to_string()));
        }
        let event = LogEvent::BlockChanged { user_id: caller.user_id.clone(), blocked_id: user_id.to_string(), blocked, ts: now_ms() };
        self.commit(self.partition_of(&caller.user_id), vec![event], None).await
    }

    /// The users the caller blocked.
    pub fn blocks(&self, caller: &Caller) -> Result<Vec<String>> {
        let mut blocked = self.state.blocks_of(&caller.user_id)?;
        blocked.sort();
        Ok(blocked)
    }

    /// Refuses when one of `user_ids` blocked the caller: nobody is put in
    /// a conversation (or a dm) by someone they blocked.
    pub(crate) fn check_not_blocked_by(&self, caller: &Caller, user_ids: &[String]) -> Result<()> {
        for user_id in user_ids {
            if self.state.is_blocked(user_id, &caller.user_id)? {
                return Err(Error::Blocked(format!("user `{user_id}` blocked you: you cannot add them to a conversation or open a dm with them")));
            }
        }
        Ok(())
    }

    /// A user's devices, oldest first.
    pub fn devices(&self, user_id: &str) -> Result<Vec<Arc<Device>>> {
        Ok(self.state.devices_of(user_id)?)
    }

    pub fn user_by_username(&self, username: &str) -> Result<Option<Arc<User>>> {
        let Some(user_id) = self.state.user_id_by_name(username)? else { return Ok(None) };
        Ok(self.state.user(&user_id)?)
    }

    pub fn user(&self, user_id: &str) -> Result<Option<Arc<User>>> {
        Ok(self.state.user(user_id)?)
    }

    pub fn device(&self, device_id: &str) -> Result<Option<Arc<Device>>> {
        Ok(self.state.device(device_id)?)
    }

    pub fn has_role(&self, user_id: &str, role: AccountRole) -> Result<bool> {
        Ok(self.user(user_id)?.is_some_and(|user| user.roles.contains(&role)))
    }
}
