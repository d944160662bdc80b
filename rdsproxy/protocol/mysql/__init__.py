"""Sans-IO pieces of the MySQL/MariaDB wire protocol: packets and authentication."""
