import math

import torch

from dreamdpo.cameras import CameraConfig, orbit_cameras, random_cameras


def test_four_view_groups_are_90_degrees_apart_and_share_the_rest():
    cams = random_cameras(CameraConfig(n_views=4), n_groups=3, generator=torch.Generator().manual_seed(0))
    assert len(cams) == 12
    for g in range(3):
        sl = slice(4 * g, 4 * g + 4)
        az = cams.azimuth[sl]
        diffs = torch.remainder(az[1:] - az[:-1], 360.0)
        assert torch.allclose(diffs, torch.full((3,), 90.0), atol=1e-4)
        for f in (cams.elevation, cams.distance, cams.fovy):
            assert torch.all(f[sl] == f[sl][0])


def test_ranges_and_relative_distance_frame_the_object():
    cfg = CameraConfig()
    cams = random_cameras(cfg, n_groups=500, generator=torch.Generator().manual_seed(1))
    assert cams.elevation.min() >= cfg.elevation_range[0] and cams.elevation.max() <= cfg.elevation_range[1]
    assert cams.fovy.min() >= cfg.fovy_range[0] and cams.fovy.max() <= cfg.fovy_range[1]
    half_width = cams.distance * torch.tan(torch.deg2rad(cams.fovy) / 2)
    assert half_width.min() >= 0.8 - 1e-5 and half_width.max() <= 1.0 + 1e-5


def test_same_generator_seed_same_cameras():
    a = random_cameras(CameraConfig(), 4, torch.Generator().manual_seed(7))
    b = random_cameras(CameraConfig(), 4, torch.Generator().manual_seed(7))
    assert torch.equal(a.azimuth, b.azimuth) and torch.equal(a.distance, b.distance)


def test_central_ray_points_at_origin_and_frame_is_orthonormal():
    cams = orbit_cameras(8, elevation=20.0)
    c2w = cams.c2w()
    rot = c2w[:, :3, :3]
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3).expand(8, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(8), atol=1e-5)
    o, d = cams.rays(2, 2)  # the four pixels surround the optical axis
    axis = torch.nn.functional.normalize(d.mean(dim=(1, 2)), dim=-1)
    to_origin = torch.nn.functional.normalize(-o[:, 0, 0], dim=-1)
    assert torch.allclose(axis, to_origin, atol=1e-5)
    assert torch.allclose(d.norm(dim=-1), torch.ones_like(d[..., 0]), atol=1e-5)


def test_z_up_and_angles_in_degrees():
    cams = orbit_cameras(4, elevation=30.0, fovy=40.0)
    pos = cams.positions()
    assert torch.allclose(pos[:, 2] / cams.distance, torch.full((4,), math.sin(math.radians(30))), atol=1e-6)
    # azimuth 0 looks from +x, azimuth 90 from +y
    assert pos[0, 0] > 0 and abs(pos[0, 1]) < 1e-5
    assert pos[1, 1] > 0 and abs(pos[1, 0]) < 1e-5
    # image up is world up: the top row of pixels looks higher than the bottom row
    _, d = cams.rays(8, 8)
    assert torch.all(d[:, 0, :, 2].mean(-1) > d[:, -1, :, 2].mean(-1))


def test_field_of_view_matches_ray_angles():
    cams = orbit_cameras(1, fovy=60.0)
    _, d = cams.rays(64, 64)
    centre = torch.nn.functional.normalize(d[0, 31:33, 31:33].mean(dim=(0, 1)), dim=0)
    top = d[0, 0, 31:33].mean(0)
    top = torch.nn.functional.normalize(top, dim=0)
    angle = torch.rad2deg(torch.arccos((centre * top).sum()))
    assert abs(float(angle) - 30.0 * (63.0 / 64.0)) < 0.6  # pixel centres sit half a pixel inside
