"""MySQL/MariaDB engine adapters: client sessions, backend connections and their wiring."""
