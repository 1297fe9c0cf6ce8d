"""The media worker's audio: μ-law (g711), 8k<->24k FIR (fir), per-call format conversion (convert), the
playout queue and worker clock (playout, lag), and the echo-aware speech gate (gate)."""
