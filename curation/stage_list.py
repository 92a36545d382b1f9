"""The one stage list: pipeline order, config sections, funnel order and the dataset card's order.

Adding a stage means writing ``curation/stages/<name>.py`` (config dataclass, method, stage class;
see :mod:`vividhead.curation.stage`) and adding its class here, where it runs. Everything else
(the YAML section, ``stats.json``, the summary table, the card's funnel) follows from this list.
"""

from __future__ import annotations

from vividhead.curation.stage import BaseStage
from vividhead.curation.stages.asd import ASDStage
from vividhead.curation.stages.attributes import AttributesStage
from vividhead.curation.stages.audio_features import AudioFeaturesStage
from vividhead.curation.stages.dedup import DedupStage
from vividhead.curation.stages.face import FaceStage
from vividhead.curation.stages.face_mask import FaceMaskStage
from vividhead.curation.stages.face_visibility import FaceVisibilityStage
from vividhead.curation.stages.normalize import NormalizeStage
from vividhead.curation.stages.occlusion import OcclusionStage
from vividhead.curation.stages.probe import ProbeStage
from vividhead.curation.stages.scene_split import SceneSplitStage
from vividhead.curation.stages.speech import SpeechStage
from vividhead.curation.stages.syncnet import SyncNetStage
from vividhead.curation.stages.transition import TransitionStage
from vividhead.curation.stages.write import WriteStage

#: Every stage class in pipeline order. Per-row stages run on Ray; a global stage (dedup) runs on
#: the driver over all rows reached so far; the sink (write) comes last.
STAGES: tuple[type[BaseStage], ...] = (
    ProbeStage,
    DedupStage,
    SceneSplitStage,
    FaceStage,  # on the source's first clip frame: plans the crop normalize applies (one encode)
    NormalizeStage,
    SpeechStage,  # audio only: cheap, so before the frame stages
    # Frame stages: consecutive ones run in one actor over one decode (curation/frame_group.py).
    FaceVisibilityStage,
    TransitionStage,
    OcclusionStage,
    SyncNetStage,
    ASDStage,
    FaceMaskStage,
    AudioFeaturesStage,
    AttributesStage,
    WriteStage,
)

#: Stage names in pipeline order (``stats.json["stage_order"]``, the card's funnel order).
STAGE_ORDER: tuple[str, ...] = tuple(s.name for s in STAGES)
