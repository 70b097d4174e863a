//! A message's way in: from the broker session and the consume loop down to one delivery's
//! life (`apply`, read first), with batching, settling, parking and the failure policy around it,
//! and catching up from the shop's history before going live (`replay`).

pub(crate) mod apply;
pub(crate) mod batch;
pub(crate) mod consume;
pub(crate) mod failure;
pub(crate) mod handler;
pub(crate) mod inbox;
pub(crate) mod parking;
pub(crate) mod provenance;
pub(crate) mod replay;
pub(crate) mod session;
pub(crate) mod settle;
pub(crate) mod unit_of_work;
pub(crate) mod unpark;
