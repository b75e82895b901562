"""OpenPose: body, and hands and face on top (openpose, openpose_hand, openpose_face, openpose_faceonly,
openpose_full), with CMU's networks as ControlNet 1.1 ships them (through controlnet_aux, the code the extension
vendors): openpose/body_pose_model.pth, openpose/hand_pose_model.pth, openpose/facenet.pth.

Hands and faces are found from the body's keypoints (wrists, elbows, eyes, ears), as in the extension, so every
variant needs the body network; a variant loads only the networks it draws.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np
import torch

from modules.controlnet.nets import loading
from modules.controlnet.preprocessor_images import hwc3, resize_image_with_pad
from modules.controlnet.preprocessor_registry import weights_path

BODY = ("openpose", "body_pose_model.pth")
HAND = ("openpose", "hand_pose_model.pth")
FACE = ("openpose", "facenet.pth")
# OpenPose's hand skeleton: wrist to each finger's four joints
HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]
EPS = 0.01  # keypoints at the canvas edge are "not found" (controlnet_aux's convention)


def _original_keys(network: torch.nn.Module, state: loading.StateDict) -> loading.StateDict:
    """CMU's files name layers without the stage prefix ("conv1_1.weight" for "model0.conv1_1.weight")."""
    names = {".".join(k.split(".")[1:]): k for k in network.state_dict()}
    return {names.get(k, k): v for k, v in state.items()}


def _build_body(path: str, state: loading.StateDict) -> torch.nn.Module:
    from controlnet_aux.open_pose.model import bodypose_model

    network = bodypose_model()
    return loading.fill(path, network, _original_keys(network, state), "OpenPose body")


def _build_hand(path: str, state: loading.StateDict) -> torch.nn.Module:
    from controlnet_aux.open_pose.model import handpose_model

    network = handpose_model()
    return loading.fill(path, network, _original_keys(network, state), "OpenPose hand")


def _build_face(path: str, state: loading.StateDict) -> torch.nn.Module:
    from controlnet_aux.open_pose.face import FaceNet

    return loading.fill(path, FaceNet(), state, "OpenPose face")


def _detector(preprocessor: str, hands: bool, face: bool):
    """controlnet_aux's OpenposeDetector around our loaded networks (its own loader would use torch.load)."""
    from controlnet_aux.open_pose import Body, Face, Hand, OpenposeDetector
    from controlnet_aux.open_pose.face import params

    # every file the variant needs is looked up before any is loaded: a missing one is named at once
    for relative in (BODY, *([HAND] if hands else []), *([FACE] if face else [])):
        weights_path(preprocessor, *relative)
    body = Body.__new__(Body)
    body.model = loading.load_network(preprocessor, BODY, _build_body)
    hand_estimation = face_estimation = None
    if hands:
        hand_estimation = Hand.__new__(Hand)
        hand_estimation.model = loading.load_network(preprocessor, HAND, _build_hand)
    if face:
        face_estimation = Face.__new__(Face)
        face_estimation.model = loading.load_network(preprocessor, FACE, _build_face)
        face_estimation.inference_size = params["inference_img_size"]
        face_estimation.sigma = params["gaussian_sigma"]
        face_estimation.threshold = params["heatmap_peak_thresh"]
    return OpenposeDetector(body, hand_estimation, face_estimation), body.model


def draw_hand(canvas: np.ndarray, keypoints) -> np.ndarray:
    """controlnet_aux's hand drawing (one hue per bone, red joints), with colorsys for the hue so that drawing
    needs no matplotlib."""
    if not keypoints:
        return canvas
    height, width = canvas.shape[:2]
    points = [(int(k.x * width), int(k.y * height)) if k is not None else None for k in keypoints]
    for i, (a, b) in enumerate(HAND_EDGES):
        if points[a] is None or points[b] is None or min(*points[a], *points[b]) <= EPS:
            continue
        color = [c * 255 for c in colorsys.hsv_to_rgb(i / float(len(HAND_EDGES)), 1.0, 1.0)]
        cv2.line(canvas, points[a], points[b], color, thickness=2)
    for point in points:
        if point is not None and min(point) > EPS:
            cv2.circle(canvas, point, 4, (0, 0, 255), thickness=-1)
    return canvas


def draw(poses, height: int, width: int, body: bool, hands: bool, face: bool) -> np.ndarray:
    from controlnet_aux.open_pose import util

    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for pose in poses:
        if body:
            canvas = util.draw_bodypose(canvas, pose.body.keypoints)
        if hands:
            canvas = draw_hand(draw_hand(canvas, pose.left_hand), pose.right_hand)
        if face:
            canvas = util.draw_facepose(canvas, pose.face)
    return canvas


def openpose(image: np.ndarray, resolution: int, _a: float, _b: float, body: bool = True, hands: bool = False,
             face: bool = False, name: str = "openpose") -> np.ndarray:
    """The pose skeleton drawn in OpenPose's colours on black, at the processor resolution."""
    padded, remove_pad = resize_image_with_pad(image, resolution)
    with loading.quiet_library():
        detector, body_network = _detector(name, hands, face)
        poses = loading.run(body_network, lambda: detector.detect_poses(padded, hands, face))
    height, width = padded.shape[:2]
    canvas = draw(poses, height, width, body, hands, face)
    return hwc3(remove_pad(canvas))
