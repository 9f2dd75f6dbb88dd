//! tar.gz in and out of the workspace: [`unpack`] for what the backend sends (the source, an
//! earlier stage's workspace), [`pack`] for what the stage leaves to the next.

pub mod pack;
pub mod unpack;
