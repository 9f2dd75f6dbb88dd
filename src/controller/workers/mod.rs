//! Workers: their status, the durable record of their runs ([`status`]), and their life in the
//! pool and with the backend ([`lifecycle`]).

pub mod lifecycle;
pub mod status;

pub use lifecycle::{
    create_worker, delete_worker, leave, on_deregistered, on_registered, register_again,
    remove_finalizer, set_draining,
};
pub use status::{leaving, patch_params, post_params, state_message, update_status, worker_ulid};
