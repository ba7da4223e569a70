"""Analytics of a run: the emergent behaviour (longer thinking, reflection words) and the HTML report."""
