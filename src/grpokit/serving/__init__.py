"""Model servers the pipeline and the trainers start for their stages: the LLM judge of rejection
sampling (``transformers serve``) and a vLLM rollout server (``grpokit serve-rollouts``)."""
