"""Query-side logic above the store: query expressions and filters parsed, a request planned (checked against the
limits and the index) and executed in one snapshot (ranked lists, fusion, cutoffs, facets), and ANN recall measured
and tuned against exact search."""
