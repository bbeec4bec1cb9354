"""The Hub's pipeline tag and the transformers Auto class of a model, from its architecture's name (no import of
transformers: `ckpt info` and `ls` stay fast). The suffix rules follow transformers' own Auto mappings
(``AutoModelForSequenceClassification`` holds the ``*ForSequenceClassification`` classes, and so on)."""

from __future__ import annotations

# Longest suffix first: "ForConditionalGeneration" before "Model".
_SUFFIXES: tuple[tuple[str, str, str], ...] = (
    ("ForSequenceClassification", "text-classification", "AutoModelForSequenceClassification"),
    ("ForTokenClassification", "token-classification", "AutoModelForTokenClassification"),
    ("ForQuestionAnswering", "question-answering", "AutoModelForQuestionAnswering"),
    ("ForMultipleChoice", "multiple-choice", "AutoModelForMultipleChoice"),
    ("ForMaskedLM", "fill-mask", "AutoModelForMaskedLM"),
    ("ForPreTraining", "fill-mask", "AutoModelForPreTraining"),
    ("ForCausalLM", "text-generation", "AutoModelForCausalLM"),
    ("LMHeadModel", "text-generation", "AutoModelForCausalLM"),
    ("ForSpeechSeq2Seq", "automatic-speech-recognition", "AutoModelForSpeechSeq2Seq"),
    ("ForCTC", "automatic-speech-recognition", "AutoModelForCTC"),
    ("ForAudioClassification", "audio-classification", "AutoModelForAudioClassification"),
    ("ForImageClassification", "image-classification", "AutoModelForImageClassification"),
    ("ForObjectDetection", "object-detection", "AutoModelForObjectDetection"),
    ("ForSemanticSegmentation", "image-segmentation", "AutoModelForSemanticSegmentation"),
    ("ForDepthEstimation", "depth-estimation", "AutoModelForDepthEstimation"),
    ("ForConditionalGeneration", "text2text-generation", "AutoModelForSeq2SeqLM"),
    ("Model", "feature-extraction", "AutoModel"),
)
# Conditional generation that is not text to text: speech and vision-language models.
_GENERATION_BY_TYPE = {
    "whisper": ("automatic-speech-recognition", "AutoModelForSpeechSeq2Seq"),
    "speech_to_text": ("automatic-speech-recognition", "AutoModelForSpeechSeq2Seq"),
    "llava": ("image-text-to-text", "AutoModelForImageTextToText"),
    "idefics2": ("image-text-to-text", "AutoModelForImageTextToText"),
    "paligemma": ("image-text-to-text", "AutoModelForImageTextToText"),
    "blip": ("image-to-text", "AutoModelForVision2Seq"),
}


def pipeline_for(architecture: str | None, model_type: str | None = None) -> tuple[str | None, str | None]:
    """(pipeline tag, Auto class) for an architecture such as 'BertForSequenceClassification'; (None, None) when
    no rule knows it."""
    if not architecture:
        return None, None
    for suffix, tag, auto in _SUFFIXES:
        if architecture.endswith(suffix):
            if suffix == "ForConditionalGeneration" and model_type in _GENERATION_BY_TYPE:
                return _GENERATION_BY_TYPE[model_type]
            return tag, auto
    return None, None
