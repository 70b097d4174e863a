//! The HTTP side of a service: the server with its limits and health routes (`server`), bearer
//! tokens (`auth`) and the extractors that turn bad requests into clear 4xx problems.

pub mod auth;
pub(crate) mod connections;
pub(crate) mod health;
pub mod openapi;
pub mod problem;
pub mod requests;
pub(crate) mod server;
