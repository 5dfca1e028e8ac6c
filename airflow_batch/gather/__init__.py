"""The gather stage: result lines into rows, a round's files, retry rounds' requests, the final merge."""
