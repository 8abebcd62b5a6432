//! The rules of tic-tac-toe, with no networking: a board, whose turn it is, and how a game ends.

use std::fmt;

use serde::Serialize;

/// A player's mark. `x` and `o` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mark {
    /// Plays first in the first game.
    X,
    /// Plays second in the first game.
    O,
}

impl Mark {
    /// The other mark.
    pub fn other(self) -> Mark {
        match self {
            Mark::X => Mark::O,
            Mark::O => Mark::X,
        }
    }
}

/// How a game ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `mark` has three in a row, on the cells of `line`.
    Won {
        /// The winner.
        mark: Mark,
        /// The winning cells, 0 to 8, row by row.
        line: [usize; 3],
    },
    /// The board is full and nobody won.
    Draw,
}

/// Why a move is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveError {
    /// The game is over; start a new one first.
    GameOver,
    /// It is the other mark's turn.
    NotYourTurn,
    /// The cell is not 0 to 8.
    NoSuchCell,
    /// The cell already has a mark.
    Taken,
}

impl fmt::Display for MoveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MoveError::GameOver => "the game is over",
            MoveError::NotYourTurn => "it is not your turn",
            MoveError::NoSuchCell => "there is no such cell",
            MoveError::Taken => "that cell is taken",
        })
    }
}

const LINES: [[usize; 3]; 8] = [
    [0, 1, 2],
    [3, 4, 5],
    [6, 7, 8],
    [0, 3, 6],
    [1, 4, 7],
    [2, 5, 8],
    [0, 4, 8],
    [2, 4, 6],
];

/// One game: nine cells, the mark to move, and the outcome once there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Game {
    board: [Option<Mark>; 9],
    turn: Mark,
    outcome: Option<Outcome>,
}

impl Game {
    /// An empty board on which `first` moves first.
    pub fn new(first: Mark) -> Game {
        Game {
            board: [None; 9],
            turn: first,
            outcome: None,
        }
    }

    /// The cells, row by row.
    pub fn board(&self) -> &[Option<Mark>; 9] {
        &self.board
    }

    /// The mark to move (meaningless once the game is over).
    pub fn turn(&self) -> Mark {
        self.turn
    }

    /// How the game ended, if it did.
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// Puts `mark` on `cell` (0 to 8, row by row) if the rules allow it, then passes the turn or ends the game.
    pub fn play(&mut self, mark: Mark, cell: usize) -> Result<(), MoveError> {
        if self.outcome.is_some() {
            return Err(MoveError::GameOver);
        }
        if mark != self.turn {
            return Err(MoveError::NotYourTurn);
        }
        let slot = self.board.get_mut(cell).ok_or(MoveError::NoSuchCell)?;
        if slot.is_some() {
            return Err(MoveError::Taken);
        }
        *slot = Some(mark);
        let won = LINES
            .iter()
            .find(|line| line.iter().all(|&cell| self.board[cell] == Some(mark)));
        self.outcome = match won {
            Some(&line) => Some(Outcome::Won { mark, line }),
            None if self.board.iter().all(Option::is_some) => Some(Outcome::Draw),
            None => None,
        };
        self.turn = mark.other();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_in_a_row_wins() {
        let mut game = Game::new(Mark::X);
        for (mark, cell) in [(Mark::X, 0), (Mark::O, 3), (Mark::X, 1), (Mark::O, 4), (Mark::X, 2)] {
            game.play(mark, cell).unwrap();
        }
        assert_eq!(
            game.outcome(),
            Some(Outcome::Won {
                mark: Mark::X,
                line: [0, 1, 2]
            })
        );
        assert_eq!(game.play(Mark::O, 5), Err(MoveError::GameOver));
    }

    #[test]
    fn a_full_board_without_a_line_is_a_draw() {
        let mut game = Game::new(Mark::X);
        // x o x / x o o / o x x
        for (mark, cell) in [
            (Mark::X, 0),
            (Mark::O, 1),
            (Mark::X, 2),
            (Mark::O, 4),
            (Mark::X, 3),
            (Mark::O, 5),
            (Mark::X, 7),
            (Mark::O, 6),
            (Mark::X, 8),
        ] {
            game.play(mark, cell).unwrap();
        }
        assert_eq!(game.outcome(), Some(Outcome::Draw));
    }

    #[test]
    fn illegal_moves_change_nothing() {
        let mut game = Game::new(Mark::O);
        assert_eq!(game.play(Mark::X, 0), Err(MoveError::NotYourTurn));
        assert_eq!(game.play(Mark::O, 9), Err(MoveError::NoSuchCell));
        game.play(Mark::O, 4).unwrap();
        assert_eq!(game.play(Mark::X, 4), Err(MoveError::Taken));
        assert_eq!(game.turn(), Mark::X);
        assert_eq!(game.board().iter().flatten().count(), 1);
    }
}
