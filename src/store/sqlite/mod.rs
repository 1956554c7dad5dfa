//! The embedded store: leases in a SQLite file shared by the processes of one machine.
