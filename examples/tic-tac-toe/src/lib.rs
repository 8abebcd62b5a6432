//! Tic-tac-toe on emitter, server-authoritative: the server holds the board and decides every move; clients only ask.
//!
//! The first two users to join take the seats (`x`, then `o`); everyone after them watches. A player whose connection
//! drops keeps the seat: its page relinks as the same user and gets the board as it is. A player who leaves (or is
//! kicked) frees the seat for the first spectator, and a new game starts.
//!
//! Messages, all with the `ttt/` prefix:
//! - client to server: `ttt/move` with the cell (0 to 8, row by row) as payload; `ttt/restart` once a game is over.
//! - server to clients: `ttt/state` with the whole table (sent to everyone after every change, and to a user when it
//!   links); `ttt/error` with a reason, to the sender of a move that is not allowed.

pub mod game;

use std::sync::Arc;
use std::time::Duration;

use axum::response::Html;
use axum::routing::get;
use axum::Router;
use emitter_core::{Message, Server};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::game::{Game, Mark, Outcome};

/// The table, from the server to everyone.
pub const STATE: &str = "ttt/state";
/// A move, from a player: the payload is the cell, 0 to 8.
pub const MOVE: &str = "ttt/move";
/// A new game, from a player, once the game is over.
pub const RESTART: &str = "ttt/restart";
/// How long a player whose page went away keeps their seat: long enough for a reload, short enough that a closed tab
/// does not hold it for good.
pub const GRACE_PERIOD: Duration = Duration::from_secs(60);
/// Why a request was refused, from the server to its sender.
pub const ERROR: &str = "ttt/error";

/// Who sits where, and the game they play. The server's listeners are its only writers.
struct Table {
    x: Option<String>,
    o: Option<String>,
    game: Game,
    /// Who moves first in the next game: the players take turns.
    next_first: Mark,
}

impl Table {
    fn new() -> Table {
        Table {
            x: None,
            o: None,
            game: Game::new(Mark::X),
            next_first: Mark::O,
        }
    }

    fn seat_of(&self, username: &str) -> Option<Mark> {
        if self.x.as_deref() == Some(username) {
            Some(Mark::X)
        } else if self.o.as_deref() == Some(username) {
            Some(Mark::O)
        } else {
            None
        }
    }

    fn is_full(&self) -> bool {
        self.x.is_some() && self.o.is_some()
    }

    /// Seats `username` on the first free seat, if any, and starts a new game. Returns whether it sat down.
    fn sit(&mut self, username: &str) -> bool {
        let seat = match (&self.x, &self.o) {
            (None, _) => &mut self.x,
            (_, None) => &mut self.o,
            _ => return false,
        };
        *seat = Some(username.to_owned());
        self.new_game();
        true
    }

    /// Frees the seat of `username`, if it has one. Returns whether it did.
    fn stand(&mut self, username: &str) -> bool {
        match self.seat_of(username) {
            Some(Mark::X) => self.x = None,
            Some(Mark::O) => self.o = None,
            None => return false,
        }
        self.new_game();
        true
    }

    fn new_game(&mut self) {
        self.game = Game::new(self.next_first);
        self.next_first = self.next_first.other();
    }

    /// The payload of the `ttt/state` message that tells a client everything it shows.
    fn state(&self) -> Value {
        let (status, winner, line) = match self.game.outcome() {
            _ if !self.is_full() => ("waiting", None, None),
            None => ("playing", None, None),
            Some(Outcome::Draw) => ("draw", None, None),
            Some(Outcome::Won { mark, line }) => ("won", Some(mark), Some(line)),
        };
        json!({
            "x": self.x, "o": self.o, "board": self.game.board(), "turn": self.game.turn(),
            "status": status, "winner": winner, "line": line,
        })
    }
}

/// Builds the game server with a [`GRACE_PERIOD`] of a minute.
pub fn build() -> Server {
    build_with(GRACE_PERIOD)
}

/// Builds the game server, with the Krmx endpoint at `/ws`. A player whose page went away (a closed tab) and did not
/// come back within `grace_period` leaves, which frees the seat.
pub fn build_with(grace_period: Duration) -> Server {
    let server = Server::builder().path("/ws").grace_period(grace_period).build();
    let table = Arc::new(Mutex::new(Table::new()));

    // Every listener sends while it holds the table: message listeners of different users run at the same time, and a
    // table sent after the lock is released could overtake a newer one. Sending never runs a listener, so holding the
    // lock across it cannot deadlock; no listener calls kick, join or unlink with the table locked.

    // A user who joins takes a free seat; the others hear of the new table. (The newcomer is not linked yet: it gets
    // the table when it links, below.)
    let t = table.clone();
    server.on_join(move |u| {
        let mut table = t.lock();
        if table.sit(&u) {
            tracing::info!(username = %u, "took a seat");
            broadcast(u.server(), &table.state());
        }
    });

    // Every link, a first one or a relink after a refresh, gets the table as it is now.
    let t = table.clone();
    server.on_link(move |u| {
        let table = t.lock();
        if let Err(error) = u.send_payload(STATE, &table.state()) {
            tracing::warn!(username = %u, %error, "could not send the table");
        }
    });

    // A player who leaves frees the seat for the first spectator, in join order.
    let t = table.clone();
    server.on_leave(move |u| {
        let mut table = t.lock();
        if !table.stand(&u) {
            return;
        }
        let spectator = u
            .server()
            .users()
            .into_iter()
            .find(|user| table.seat_of(&user.username).is_none());
        if let Some(spectator) = spectator {
            table.sit(&spectator.username);
            tracing::info!(username = spectator.username, "took the free seat");
        }
        broadcast(u.server(), &table.state());
    });

    server.on_message(move |u, m| {
        let mut table = table.lock();
        match handle(&mut table, &u, m) {
            Ok(()) => broadcast(u.server(), &table.state()),
            Err(reason) => {
                tracing::debug!(username = %u, reason, "refused");
                if let Err(error) = u.send_payload(ERROR, &reason) {
                    tracing::warn!(username = %u, %error, "could not send an error");
                }
            }
        }
    });
    server
}

/// Applies a player's request to the table, or says why not.
fn handle(table: &mut Table, username: &str, message: &Message) -> Result<(), String> {
    let seat = table.seat_of(username);
    match message.kind.as_str() {
        MOVE => {
            let cell: usize = message
                .payload_as()
                .map_err(|_| "a move is a cell number, 0 to 8".to_owned())?;
            let mark = seat.ok_or("spectators cannot move")?;
            if !table.is_full() {
                return Err("waiting for a second player".to_owned());
            }
            table.game.play(mark, cell).map_err(|error| error.to_string())?;
            tracing::info!(username, cell, "moved");
            Ok(())
        }
        RESTART => {
            seat.ok_or("spectators cannot restart the game")?;
            if table.game.outcome().is_none() {
                return Err("the game is not over".to_owned());
            }
            table.new_game();
            Ok(())
        }
        other => Err(format!("unknown message type {other}")),
    }
}

fn broadcast(server: &Server, state: &Value) {
    if let Err(error) = server.broadcast_payload(STATE, state, None) {
        tracing::warn!(%error, "could not broadcast the table");
    }
}

/// The page, compiled into the binary.
const PAGE: &str = include_str!("../index.html");

/// The web app: the page at `/` and the Krmx endpoint at `/ws`.
pub fn app(server: &Server) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .merge(emitter_axum::router(server))
}
