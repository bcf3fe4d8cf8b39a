from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("posts/new/", views.post_create, name="post_create"),
    path("posts/<int:pk>/", views.post_detail, name="post_detail"),
    path("api/posts/", views.api_posts, name="api_posts"),
    path("api/environment/", views.api_environment, name="api_environment"),
]
