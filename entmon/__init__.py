"""entmon: live entropy monitoring and Clip-Cov / KL-Cov intervention for RL training of LMs.

This package holds what sits above the three import packages (`client`, the training side;
`monitor`, the service; `dashboard`): the `entmon` command and its demo, and below them all the
wire contract (`entmon.wire`) that each of them imports. Importing it loads nothing heavy.
"""
