"""Analysis of traces: reuse patterns, hit-rate curves, figures and the HTML report."""
