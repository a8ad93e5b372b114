"""Query-side logic above the store: evaluation of ANN recall against exact search, and tuning."""
