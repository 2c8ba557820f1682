"""What shared weights reveal about a speaker: the messages an adversary observes (`record`)
and an attribute-inference attack on them by shadow training (`attack`, `shadow`)."""
