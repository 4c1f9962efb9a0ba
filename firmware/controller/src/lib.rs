//! The vending controller's core: what a machine does between a customer's first press and
//! the platform's acknowledgement, independent of its I/O.
//!
//! The crate is `#![no_std]` with `alloc`, so the same code runs on an ESP32-class controller
//! and on the host (the fleet simulator, the tests). What the machine touches is behind small
//! traits or returned as actions for a driver to perform: the clock is an argument, the flash
//! is [`outbox::Log`], the payment network, the motors and the display are [`vend::Action`]s,
//! and their answers come back as [`vend::Input`]s.
//!
//! # Layout
//! - [`vend`]: the vend cycle as a state machine: a cart, payment (online, or offline under
//!   the floor limit), dispensing confirmed by the drop sensor with one retry, a refund for
//!   what did not drop, a receipt; and the platform's commands, applied once per id.
//! - [`outbox`]: the durable outbox: an append-only log of checksummed, numbered records that
//!   survives power loss at any byte, replays oldest first and forgets a record only after the
//!   platform acknowledged it.
//! - [`file`] (feature `std`): the outbox's log in a file on the host.

#![no_std]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

#[cfg(feature = "std")]
pub mod file;
pub mod outbox;
pub mod vend;
