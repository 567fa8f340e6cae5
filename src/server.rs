//! (being written: HTTP intake)
