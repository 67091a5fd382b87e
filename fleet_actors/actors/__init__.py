"""Ray shells: story actors, the live-story registry. Logic lives in application/ and domain/."""
