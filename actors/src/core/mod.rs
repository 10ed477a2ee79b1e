//! Pure state machines: the rules of the node with no I/O, no clocks and no actors,
//! so property tests can drive them directly. Actors are thin shells around these.

pub mod admission;
pub mod budget;
pub mod commit;
pub mod epoch;
pub mod fanout;
pub mod inbox;
pub mod rate;
