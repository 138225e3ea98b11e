//! The SQL text the SQL Server adapter sends, built for given tables (and tested as text).
