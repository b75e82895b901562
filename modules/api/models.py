"""Request and response models of the API, with A1111's field names and API defaults (pydantic v2).

Every request field is optional, as in A1111 (whose models are generated from the processing constructors);
the API defaults differ from the UI's on purpose: steps 50, sampler "Euler" (through the legacy
`sampler_index`), inpaint_full_res True, inpainting_fill 0, inpaint_full_res_padding 0. Bounds that never
change are declared here (so they show in /docs); limits an admin sets (largest width, steps, batch) are
checked against the `api_max_*` settings in `modules.api.validation`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**63 - 1  # torch seeds are 64-bit; image i of a batch uses seed + i


class _Model(BaseModel):
    # extra="ignore": clients written for newer A1111 versions send fields we do not know; A1111 ignores them too.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, protected_namespaces=())


class GenerationRequest(_Model):
    """The fields txt2img and img2img share (A1111's StableDiffusionProcessing plus the API extras)."""

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int | None = Field(-1, ge=-1, le=MAX_SEED)
    subseed: int | None = Field(-1, ge=-1, le=MAX_SEED)
    subseed_strength: float | None = Field(0, ge=0, le=1)
    seed_resize_from_h: int | None = Field(-1, ge=-1)
    seed_resize_from_w: int | None = Field(-1, ge=-1)
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int | None = Field(1, ge=1)
    n_iter: int | None = Field(1, ge=1)
    steps: int | None = Field(50, ge=1)
    cfg_scale: float | None = 7.0
    width: int | None = Field(512, ge=64)
    height: int | None = Field(512, ge=64)
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = None
    denoising_strength: float | None = Field(0.75, ge=0, le=1)
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = Field(None, ge=0, le=1)
    token_merging_ratio: float | None = Field(0, description="ToMe for the first pass (0 to 0.9; 0: the settings)")
    token_merging_ratio_hr: float | None = Field(0, description="ToMe for the hires pass (0: the settings)")
    disable_extra_networks: bool | None = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    force_task_id: str | None = Field(None, max_length=200)

    # API-only extras
    sampler_index: str | None = Field("Euler", description="legacy name of sampler_name (a name, not an index)")
    script_name: str | None = None
    script_args: list[Any] | None = Field(default_factory=list)
    send_images: bool | None = True
    save_images: bool | None = False
    alwayson_scripts: dict[str, Any] | None = Field(default_factory=dict)
    infotext: str | None = Field(None, description="infotext whose values fill every field not set explicitly")


class StableDiffusionTxt2ImgProcessingAPI(GenerationRequest):
    enable_hr: bool | None = False
    firstphase_width: int | None = 0
    firstphase_height: int | None = 0
    hr_scale: float | None = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = 0
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = ""
    hr_negative_prompt: str | None = ""
    hr_cfg: float | None = Field(None, description="Hires CFG Scale; null: the same as cfg_scale")


class StableDiffusionImg2ImgProcessingAPI(GenerationRequest):
    init_images: list[str] | None = Field(None, description="base64 images (or data: URLs); required")
    resize_mode: int | None = Field(0, ge=0, le=3)
    image_cfg_scale: float | None = None
    mask: str | None = Field(None, description="base64 mask: white is repainted")
    mask_blur_x: int | None = Field(4, ge=0, le=512)
    mask_blur_y: int | None = Field(4, ge=0, le=512)
    mask_blur: int | None = Field(None, ge=0, le=512)
    mask_round: bool | None = True
    inpainting_fill: int | None = Field(0, ge=0, le=3)
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: int | None = Field(0, ge=0, le=4096)
    inpainting_mask_invert: int | None = Field(0, ge=0, le=1)
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool | None = Field(False, description="echo init_images and mask back in parameters")
    depth_map: str | None = Field(None, description="SD2 depth models: base64 depth map (near = bright) used "
                                                     "instead of the estimate")
    depth_estimator: str | None = Field(None, description="SD2 depth models: the depth estimator (see "
                                                           "/sdapi/v1/depth-estimators); default midas_dpt_hybrid")


class TextToImageResponse(_Model):
    images: list[str] | None = Field(None, description="base64 images, infotext embedded")
    parameters: dict[str, Any]
    info: str = Field(description="JSON text: Processed.js()")


class ImageToImageResponse(TextToImageResponse):
    pass


class PNGInfoRequest(_Model):
    image: str = Field(description="base64 image (optionally a data: URL) whose infotext is read")


class PNGInfoResponse(_Model):
    info: str
    items: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)


class ProgressResponse(_Model):
    progress: float
    eta_relative: float
    state: dict[str, Any]
    current_image: str | None = None
    textinfo: str | None = None
    current_task: str | None = None


class InterruptRequest(_Model):
    id_task: str | None = Field(None, description="interrupt (or cancel, if queued) only this task")


class SamplerItem(_Model):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(_Model):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class UpscalerItem(_Model):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class RealesrganItem(_Model):
    name: str
    path: str | None = None
    scale: int | None = None


class LatentUpscalerModeItem(_Model):
    name: str


class FaceRestorerItem(_Model):
    name: str
    cmd_dir: str | None = None


class SDModelItem(_Model):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SDVaeItem(_Model):
    model_name: str
    filename: str


class ExtensionItem(_Model):
    name: str
    remote: str
    branch: str | None = None
    commit_hash: str | None = None
    version: str
    commit_date: int | None = None
    enabled: bool


class PromptStyleItem(_Model):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class EmbeddingItem(_Model):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int


class EmbeddingsResponse(_Model):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem]


class MemoryResponse(_Model):
    ram: dict[str, Any]
    cuda: dict[str, Any]


class ScriptsList(_Model):
    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class ScriptArg(_Model):
    label: str | None = None
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list[Any] | None = None


class ScriptInfo(_Model):
    name: str | None = None
    is_alwayson: bool | None = None
    is_img2img: bool | None = None
    args: list[ScriptArg] = Field(default_factory=list)


class InternalProgressRequest(_Model):
    id_task: str = Field(max_length=200)
    id_live_preview: int = -1
    live_preview: bool = True


class InternalProgressResponse(_Model):
    active: bool
    queued: bool
    completed: bool
    progress: float | None = None
    eta: float | None = None
    live_preview: str | None = None
    id_live_preview: int | None = None
    textinfo: str | None = None
    queue_position: int = 0


class PendingTasksResponse(_Model):
    size: int
    tasks: list[str]


class ExtrasBaseRequest(_Model):
    """A1111's Extras fields (the Upscale, GFPGAN and CodeFormer postprocessing scripts)."""

    resize_mode: Literal[0, 1] = Field(0, description="0: scale by upscaling_resize, 1: scale to "
                                                      "upscaling_resize_w x upscaling_resize_h")
    show_extras_results: bool = Field(True, description="false: answer with the infotext only, no images")
    gfpgan_visibility: float = Field(0, ge=0, le=1)
    codeformer_visibility: float = Field(0, ge=0, le=1)
    codeformer_weight: float = Field(0, ge=0, le=1, description="0 = maximum effect, 1 = minimum effect")
    upscaling_resize: float = Field(2, ge=1, le=8)
    upscaling_resize_w: int = Field(512, ge=1)
    upscaling_resize_h: int = Field(512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1)
    upscale_first: bool = Field(False, description="run the upscale before face restoration whatever the option "
                                                   "postprocessing_operation_order says")


class ExtraBaseResponse(_Model):
    html_info: str


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = Field("", description="base64 image (optionally a data: URL)")


class ExtrasSingleImageResponse(ExtraBaseResponse):
    image: str | None = None


class FileData(_Model):
    data: str
    name: str = ""


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData]  # noqa: N815 (A1111's field name)


class ExtrasBatchImagesResponse(ExtraBaseResponse):
    images: list[str]
