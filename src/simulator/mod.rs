//! An in-process HubSpot simulator (placeholder, being written).
