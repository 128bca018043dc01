"""What a run leaves: the record type, its values, results files, the output directory, baseline and gate."""
