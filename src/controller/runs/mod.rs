//! A run's life, walked along [`super::machine`]: a schedule arrives ([`schedule`]), a stop
//! arrives ([`stop`]), the run Pod or the Worker changes ([`drive`]). Every step runs under
//! the worker's lock on a fresh read of the Worker, writes its record before its side effect,
//! and leaves what it could not finish to the next step, whoever takes it.

pub mod drive;
pub mod schedule;
pub mod stop;

#[cfg(test)]
mod tests;
