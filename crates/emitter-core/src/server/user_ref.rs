//! The user handle a listener gets: the username, and the way back to the server. [`UserRef`] itself is declared in
//! `server/mod.rs`, beside the listener lists that take it (a `Server` holds them, and a `UserRef` holds a `Server`).

use std::fmt;
use std::ops::Deref;

use serde::Serialize;

use super::{Server, UserRef};
use crate::error::Error;
use crate::protocol::Message;

impl<'a> UserRef<'a> {
    pub(crate) fn new(server: &'a Server, username: &'a str) -> UserRef<'a> {
        UserRef { server, username }
    }

    /// The username.
    pub fn username(self) -> &'a str {
        self.username
    }

    /// The server the event happened on: any of its methods may be called from a listener.
    pub fn server(self) -> &'a Server {
        self.server
    }

    /// Sends `message` to this user: [`Server::send`] to [`username`](UserRef::username), and fails like it (for
    /// example from `join` and `authenticate` listeners, where no connection is linked to the user yet).
    pub fn send(self, message: &Message) -> Result<(), Error> {
        self.server.send(self.username, message)
    }

    /// Sends a message of type `kind` with `payload` to this user: [`Server::send_payload`] to
    /// [`username`](UserRef::username).
    pub fn send_payload<T: Serialize + ?Sized>(self, kind: &str, payload: &T) -> Result<(), Error> {
        self.server.send_payload(self.username, kind, payload)
    }
}

impl Deref for UserRef<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        self.username
    }
}

impl AsRef<str> for UserRef<'_> {
    fn as_ref(&self) -> &str {
        self.username
    }
}

impl fmt::Display for UserRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.username)
    }
}

impl fmt::Debug for UserRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("UserRef").field(&self.username).finish()
    }
}

/// Serializes as the username, so a handle can go into a payload as it is.
impl Serialize for UserRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.username)
    }
}

/// Two handles are equal when they name the same user.
impl PartialEq for UserRef<'_> {
    fn eq(&self, other: &UserRef<'_>) -> bool {
        self.username == other.username
    }
}

impl Eq for UserRef<'_> {}

impl PartialEq<str> for UserRef<'_> {
    fn eq(&self, other: &str) -> bool {
        self.username == other
    }
}

impl PartialEq<&str> for UserRef<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.username == *other
    }
}

impl PartialEq<String> for UserRef<'_> {
    fn eq(&self, other: &String) -> bool {
        self.username == other
    }
}

impl PartialEq<UserRef<'_>> for str {
    fn eq(&self, other: &UserRef<'_>) -> bool {
        self == other.username
    }
}

impl PartialEq<UserRef<'_>> for &str {
    fn eq(&self, other: &UserRef<'_>) -> bool {
        *self == other.username
    }
}

impl PartialEq<UserRef<'_>> for String {
    fn eq(&self, other: &UserRef<'_>) -> bool {
        self == other.username
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_as_the_username() {
        let server = Server::new();
        let name = String::from("simon");
        let u = UserRef::new(&server, &name);
        assert_eq!(u, "simon");
        assert_eq!("simon", u);
        assert_eq!(u, name);
        assert_eq!(name, u);
        assert!(u != "mallory");
        assert_eq!(u.to_string(), "simon");
        assert_eq!(format!("{u:?}"), r#"UserRef("simon")"#);
        assert!(u.starts_with("si"));
        assert_eq!(u.username(), "simon");
        assert!(std::ptr::eq(u.server(), &server));
        assert_eq!(serde_json::to_value(u).ok(), Some(serde_json::json!("simon")));
        assert!(
            u.send(&Message::new("x/y")).is_err(),
            "nobody is linked on a server that does not listen"
        );
    }
}
