//! Tests of the PostgreSQL journal.
