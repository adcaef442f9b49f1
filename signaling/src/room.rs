//! The room registry: who is in which room, and the fan-out of room events.
//!
//! A room exists while it has participants. Each participant has an outbox (a bounded
//! channel drained by its WebSocket task); the registry never blocks on a slow client: a
//! full outbox drops the event for that client and logs it.
//!
//! For a regional network this registry becomes the local cache of a shared directory
//! (Redis); its API is what the rest of the server uses, so that swap stays local.

use crate::{ParticipantId, ParticipantInfo, Role, ServerMessage, SignalingError};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use tokio::sync::mpsc;

/// Where a participant's server messages go.
pub type Outbox = mpsc::Sender<ServerMessage>;

struct Member {
    info: ParticipantInfo,
    outbox: Outbox,
    /// Whether the others were told this participant joined. A join whose media setup
    /// fails is withdrawn silently.
    announced: bool,
}

#[derive(Default)]
struct Room {
    members: BTreeMap<ParticipantId, Member>,
}

impl Room {
    fn broadcast(&self, except: Option<&ParticipantId>, msg: &ServerMessage) {
        for (id, member) in &self.members {
            if Some(id) == except || !member.announced {
                continue;
            }
            if member.outbox.try_send(msg.clone()).is_err() {
                tracing::warn!(participant = %id, "outbox full or closed; room event dropped");
            }
        }
    }
}

/// The result of admitting a participant.
#[derive(Debug, Clone)]
pub struct Admission {
    pub id: ParticipantId,
    pub role: Role,
    /// The others already in the room, at the moment of admission.
    pub others: Vec<ParticipantInfo>,
}

/// All rooms of this server.
pub struct RoomRegistry {
    rooms: Mutex<HashMap<String, Room>>,
    cap: usize,
}

impl RoomRegistry {
    /// A registry whose rooms hold at most `cap` participants each.
    pub fn new(cap: usize) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Room>> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep serving.
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits `name` to `room`, holding its place; the others learn of it at
    /// [`RoomRegistry::announce`]. `role` is the token's; `None` (open demo mode) makes the
    /// first participant of a room its host and everyone after a participant.
    pub fn admit(
        &self,
        room: &str,
        name: &str,
        role: Option<Role>,
        outbox: Outbox,
    ) -> Result<Admission, SignalingError> {
        let mut rooms = self.lock();
        let entry = rooms.entry(room.to_owned()).or_default();
        if entry.members.len() >= self.cap {
            let empty = entry.members.is_empty();
            if empty {
                rooms.remove(room);
            }
            return Err(SignalingError::RoomFull {
                room: room.to_owned(),
                cap: self.cap,
            });
        }
        let role = role.unwrap_or(if entry.members.is_empty() {
            Role::Host
        } else {
            Role::Participant
        });
        let info = ParticipantInfo {
            id: ParticipantId::random(),
            name: name.to_owned(),
            role,
            audio_muted: false,
            video_muted: false,
        };
        let others = entry
            .members
            .values()
            .filter(|m| m.announced)
            .map(|m| m.info.clone())
            .collect();
        let id = info.id.clone();
        entry.members.insert(
            id.clone(),
            Member {
                info,
                outbox,
                announced: false,
            },
        );
        Ok(Admission { id, role, others })
    }

    /// Tells the room that an admitted participant is in (its media is set up).
    pub fn announce(&self, room: &str, id: &ParticipantId) {
        let mut rooms = self.lock();
        let Some(entry) = rooms.get_mut(room) else {
            return;
        };
        let Some(member) = entry.members.get_mut(id) else {
            return;
        };
        member.announced = true;
        let msg = ServerMessage::ParticipantJoined {
            participant: member.info.clone(),
        };
        entry.broadcast(Some(id), &msg);
    }

    /// Removes a participant and tells the others. Idempotent.
    pub fn leave(&self, room: &str, id: &ParticipantId) {
        let mut rooms = self.lock();
        let Some(entry) = rooms.get_mut(room) else {
            return;
        };
        let Some(member) = entry.members.remove(id) else {
            return;
        };
        if entry.members.is_empty() {
            rooms.remove(room);
        } else if member.announced {
            entry.broadcast(
                None,
                &ServerMessage::ParticipantLeft {
                    participant_id: id.clone(),
                },
            );
        }
    }

    /// Records a mute change and tells the others.
    pub fn set_media_state(
        &self,
        room: &str,
        id: &ParticipantId,
        audio_muted: bool,
        video_muted: bool,
    ) {
        let mut rooms = self.lock();
        let Some(entry) = rooms.get_mut(room) else {
            return;
        };
        let Some(member) = entry.members.get_mut(id) else {
            return;
        };
        member.info.audio_muted = audio_muted;
        member.info.video_muted = video_muted;
        let msg = ServerMessage::ParticipantUpdated {
            participant: member.info.clone(),
        };
        entry.broadcast(Some(id), &msg);
    }

    /// The ids of a room's participants other than `except`.
    pub fn others(&self, room: &str, except: &ParticipantId) -> Vec<ParticipantId> {
        self.lock()
            .get(room)
            .map(|r| {
                r.members
                    .keys()
                    .filter(|id| *id != except)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Number of rooms and of participants, for metrics.
    pub fn counts(&self) -> (usize, usize) {
        let rooms = self.lock();
        (rooms.len(), rooms.values().map(|r| r.members.len()).sum())
    }

    /// Participants per role across all rooms, for metrics.
    pub fn counts_by_role(&self) -> [(Role, usize); 4] {
        let mut out = [
            (Role::Host, 0),
            (Role::Presenter, 0),
            (Role::Participant, 0),
            (Role::Observer, 0),
        ];
        for room in self.lock().values() {
            for member in room.members.values() {
                if let Some(slot) = out.iter_mut().find(|(r, _)| *r == member.info.role) {
                    slot.1 += 1;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox() -> (Outbox, mpsc::Receiver<ServerMessage>) {
        mpsc::channel(16)
    }

    #[test]
    fn first_is_host_others_are_told_and_cap_holds() {
        let reg = RoomRegistry::new(2);
        let (a_tx, mut a_rx) = outbox();
        let a = reg.admit("r", "A", None, a_tx).unwrap();
        assert_eq!(a.role, Role::Host);
        assert!(a.others.is_empty());
        let (b_tx, _b_rx) = outbox();
        let b = reg.admit("r", "B", None, b_tx).unwrap();
        assert_eq!(b.role, Role::Participant);
        assert!(b.others.is_empty(), "A was not announced yet");
        assert!(a_rx.try_recv().is_err(), "B is not announced yet");
        reg.announce("r", &a.id);
        reg.announce("r", &b.id);
        assert!(matches!(
            a_rx.try_recv().unwrap(),
            ServerMessage::ParticipantJoined { participant } if participant.name == "B"
        ));
        let (c_tx, _c_rx) = outbox();
        assert!(matches!(
            reg.admit("r", "C", None, c_tx),
            Err(SignalingError::RoomFull { cap: 2, .. })
        ));
        reg.leave("r", &b.id);
        assert!(matches!(
            a_rx.try_recv().unwrap(),
            ServerMessage::ParticipantLeft { participant_id } if participant_id == b.id
        ));
        assert_eq!(reg.counts(), (1, 1));
        assert_eq!(reg.counts_by_role()[0], (Role::Host, 1));
        assert_eq!(reg.counts_by_role()[2], (Role::Participant, 0));
        reg.leave("r", &a.id);
        reg.leave("r", &a.id);
        assert_eq!(reg.counts(), (0, 0));
    }

    #[test]
    fn a_withdrawn_join_is_never_heard_of() {
        let reg = RoomRegistry::new(5);
        let (a_tx, mut a_rx) = outbox();
        let a = reg.admit("r", "A", None, a_tx).unwrap();
        reg.announce("r", &a.id);
        let (b_tx, _b_rx) = outbox();
        let b = reg.admit("r", "B", None, b_tx).unwrap();
        assert_eq!(b.others.len(), 1);
        reg.leave("r", &b.id);
        assert!(a_rx.try_recv().is_err());
    }
}
