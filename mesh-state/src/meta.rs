//! Endpoint metadata keys that mean something to the agent, not only to
//! people reading the delegator (the controller's sources set them).

/// `"true"` on an endpoint whose host is being drained (an ECS container
/// instance in `DRAINING`): agents send it traffic only when every endpoint
/// of its set is draining.
pub const DRAINING: &str = "draining";

/// The availability zone an endpoint runs in (its container instance's or
/// its task's): agents prefer endpoints in their own zone.
pub const AVAILABILITY_ZONE: &str = "availability_zone";
