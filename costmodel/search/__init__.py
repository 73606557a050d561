"""Choosing a deployment: the problem, its relaxation, the integer certificate, the brute-force
verifier and the explanation of what lost or what is infeasible."""
