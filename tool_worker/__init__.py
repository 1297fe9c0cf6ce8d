"""Tool workers: RQ workers that run slow or side-effect tools (email summaries, transcripts)."""
