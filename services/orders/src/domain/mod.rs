//! Order decisions, free of I/O: an order's life (`order`) and what makes a request to place
//! one valid, and what it costs (`placing`).

mod order;
mod placing;

pub use order::*;
pub use placing::*;
