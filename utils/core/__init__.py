"""What a right answer is: units and the cleaning step, the submission format, the sanity check, the metric.

Pure logic on strings and DataFrames; it imports nothing from the other packages (``utils.env`` aside).
"""
