//! The timeline's item kinds (PROTOCOL.md, "Timeline items"): edits, deletes, reactions and
//! the server's system items, and the aggregate a target message carries (its reactions in
//! force). Shared by the wire's message object and the stored record.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a timeline item is, when it is not a plain message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// New text for the plain message `target_seq`.
    Edit,
    /// The plain message `target_seq` is taken back (its text erased).
    Delete,
    /// A reaction to `target_seq` (the text is the emoji), or its removal.
    Reaction,
    /// A group change, made by the server.
    System,
}

impl ItemKind {
    /// Items that change a target count for nothing on their own: they are not unread and
    /// are not pushed.
    pub fn is_quiet(self) -> bool {
        matches!(self, Self::Edit | Self::Delete | Self::Reaction)
    }
}

/// A system item's group change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SystemAction {
    MemberAdded,
    MemberRemoved,
    MemberLeft,
    Renamed,
}

/// The `event` of a system item: what changed, and whom it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemEvent {
    pub action: SystemAction,
    /// The member added, removed or who left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The group's new name (`renamed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The reactions in force on a message: per emoji, in the order each was first given, the
/// users in the order they reacted. On the wire an object `{"<emoji>": [user_id, …]}` whose
/// keys keep that order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reactions(pub Vec<(String, Vec<String>)>);

impl Reactions {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `user` reacts with `emoji` (nothing changes when the reaction is in force already).
    pub fn add(&mut self, emoji: &str, user: &str) {
        match self.0.iter_mut().find(|(e, _)| e == emoji) {
            Some((_, users)) => {
                if !users.iter().any(|u| u == user) {
                    users.push(user.to_owned());
                }
            }
            None => self.0.push((emoji.to_owned(), vec![user.to_owned()])),
        }
    }

    /// `user` takes `emoji` back; an emoji nobody gives any more is dropped.
    pub fn remove(&mut self, emoji: &str, user: &str) {
        if let Some((_, users)) = self.0.iter_mut().find(|(e, _)| e == emoji) {
            users.retain(|u| u != user);
        }
        self.0.retain(|(_, users)| !users.is_empty());
    }

    /// How many different emojis `user` has in force here.
    pub fn given_by(&self, user: &str) -> usize {
        self.0
            .iter()
            .filter(|(_, users)| users.iter().any(|u| u == user))
            .count()
    }

    /// Whether `user` has `emoji` in force here.
    pub fn has(&self, emoji: &str, user: &str) -> bool {
        self.0
            .iter()
            .any(|(e, users)| e == emoji && users.iter().any(|u| u == user))
    }
}

impl Serialize for Reactions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (emoji, users) in &self.0 {
            map.serialize_entry(emoji, users)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Reactions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Reactions;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of emoji to user ids")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Reactions, A::Error> {
                let mut out = Vec::new();
                while let Some((emoji, users)) = map.next_entry::<String, Vec<String>>()? {
                    out.push((emoji, users));
                }
                Ok(Reactions(out))
            }
        }
        d.deserialize_map(InOrder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactions_keep_their_order_and_drop_emojis_nobody_gives() {
        let mut r = Reactions::default();
        r.add("👍", "b");
        r.add("🎉", "a");
        r.add("👍", "a");
        r.add("👍", "b");
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"👍":["b","a"],"🎉":["a"]}"#
        );
        assert_eq!(r.given_by("a"), 2);
        r.remove("🎉", "a");
        r.remove("👍", "x");
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"👍":["b","a"]}"#);
        let back: Reactions = serde_json::from_str(r#"{"z":["1"],"a":["2","3"]}"#).unwrap();
        assert_eq!(back.0[0].0, "z");
        assert!(back.has("a", "3"));
    }
}
