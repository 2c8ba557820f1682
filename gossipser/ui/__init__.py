"""ui: what a person sees. The live and plain displays, metrics files, rich tables and error
lines, and the convergence comparison report and plots. Imports the rooms below it.
"""
