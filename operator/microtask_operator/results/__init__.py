"""Result stores and the readers of what microtasks produced: records, merged results, logs."""
