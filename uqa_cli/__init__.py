"""`uqa`, the command line: the top layer. It imports the flows (flows/), which import the stages
(tasks/), which import the library (uqa/); the library imports none of them."""
