"""privacy: what shared weights reveal about a speaker. The messages an adversary observes
(`record`), each peer's speaker attribute (`attributes`), shadow runs (`shadow`) and the
attribute-inference attack on them (`attack`)."""
